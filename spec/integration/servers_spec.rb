# frozen_string_literal: true

require "spec_helper"
require "openssl"

# The same streams on other servers and socket types: Debian's Puma 5.6 with
# Rack 2, Puma terminating TLS itself, WEBrick without full hijack.
RSpec.describe "App servers" do
  def exercise(server, tls: false)
    client = tls ? TLSClient.open(server.port, "srv:one") : SSEClient.open(server.port, "srv:one")
    client.wait_for_head
    expect(client.status).to eq(200)
    wait_until(message: "stream attached") { server.stats[:connections] == 1 }
    ids = Array.new(3) { |i| server.publish("srv:one", "m#{i}") }
    expect(client.wait_for_events(3).map(&:data)).to eq(%w[m0 m1 m2])
    expect(client.events.last.last_event_id).to eq(ids.last)
    # The app still answers while the stream is open.
    expect(server.get("/ping").body).to eq("pong")
    client.close
    wait_until(message: "stream released") { server.stats[:connections].zero? }
  end

  it "works on Debian's Puma 5.6 with Rack 2 (full hijack, native path)" do
    server = AppServer.new(puma: :debian).start
    expect(File.read(server.log)).to include("Puma version: 5.6")
    expect(server.get("/rack_version").body).to start_with("2.2")
    exercise(server)
    expect(server.stats[:fallback_total]).to eq(0)
  ensure
    server&.stop
  end

  it "streams through the Ruby pump when Puma terminates TLS itself, never plaintext" do
    dir = Dir.mktmpdir
    key = OpenSSL::PKey::RSA.new(2048)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = 1
    cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=127.0.0.1")
    cert.public_key = key.public_key
    cert.not_before = Time.now - 60
    cert.not_after = Time.now + 3600
    cert.sign(key, OpenSSL::Digest.new("SHA256"))
    File.write(File.join(dir, "key.pem"), key.to_pem)
    File.write(File.join(dir, "cert.pem"), cert.to_pem)
    server = AppServer.new(tls: { key: File.join(dir, "key.pem"), cert: File.join(dir, "cert.pem") }).start
    exercise(server, tls: true)
    stats = server.stats
    expect(stats[:fallback_total]).to eq(1)
    expect(stats[:fallback_streams]).to eq(0)
    expect(File.read(server.log)).to include("not a plain socket")
  ensure
    server&.stop
  end

  it "streams through partial hijack on WEBrick and warns once" do
    # WEBrick writes to the client itself: a client that left is noticed
    # at the next write, the heartbeat at the latest.
    server = AppServer.new(puma: :webrick, config: { heartbeat: 0.5 }).start
    exercise(server)
    exercise(server)
    expect(server.stats[:fallback_total]).to eq(2)
    expect(File.read(server.log).scan("Spillway: ").size).to eq(1)
  ensure
    server&.stop
  end
end

# SSEClient over TLS (certificate not verified: a throwaway self-signed one).
class TLSClient < SSEClient
  def self.open(port, channel)
    new(port, "/stream?channel=#{channel}")
  end

  def initialize(port, path)
    tcp = Socket.tcp("127.0.0.1", port)
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.verify_mode = OpenSSL::SSL::VERIFY_NONE
    @ssl = OpenSSL::SSL::SSLSocket.new(tcp, ctx)
    @ssl.sync_close = true
    @ssl.connect
    @ssl.write("GET #{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    @sock = @ssl
    @parser = SSEParser.new
    @pending = +"".b
    @raw = +"".b
    @eof = false
  end

  def to_io
    @ssl.to_io
  end

  def pump
    return false if @eof

    loop do
      chunk = @ssl.read_nonblock(65_536, exception: false)
      case chunk
      when :wait_readable, :wait_writable then return true
      when nil
        @eof = true
        return false
      else
        @raw << chunk
        send(:consume, chunk)
      end
    end
  rescue OpenSSL::SSL::SSLError, Errno::ECONNRESET, IOError
    @eof = true
    false
  end
end
