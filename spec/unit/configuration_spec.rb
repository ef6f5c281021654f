# frozen_string_literal: true

require "spec_helper"

RSpec.describe Spillway::Configuration do
  def parse(url)
    described_class.new(redis_url: url).redis
  end

  it "defaults to the memory backend unless REDIS_URL is set" do
    old = ENV.delete("REDIS_URL")
    expect(described_class.new.backend).to eq(:memory)
    ENV["REDIS_URL"] = "redis://10.0.0.1:7000/2"
    expect(described_class.new.backend).to eq(:redis)
    expect(described_class.new.redis).to include(host: "10.0.0.1", port: 7000, db: 2)
  ensure
    old ? ENV["REDIS_URL"] = old : ENV.delete("REDIS_URL")
  end

  it "parses redis:// URLs with user, password and database" do
    expect(parse("redis://127.0.0.1")).to eq(host: "127.0.0.1", port: 6379, path: nil, db: 0, username: nil, password: nil,
                                             tls: false, shown: "redis://127.0.0.1")
    expect(parse("redis://:p%40ss@h:1/5")).to include(host: "h", port: 1, db: 5, username: nil, password: "p@ss")
    expect(parse("redis://alice:secret@h/0")).to include(username: "alice", password: "secret")
    expect(parse("redis://[::1]:6380")).to include(host: "::1", port: 6380)
  end

  it "parses unix:// URLs" do
    expect(parse("unix:///run/redis.sock?db=4")).to include(path: "/run/redis.sock", db: 4, password: nil)
    expect(parse("unix://:pw@/run/redis.sock")).to include(path: "/run/redis.sock", password: "pw")
  end

  it "parses rediss:// URLs (TLS) like redis:// ones" do
    expect(parse("rediss://alice:s%40cret@redis.example.com:6380/3"))
      .to include(host: "redis.example.com", port: 6380, path: nil, db: 3, username: "alice", password: "s@cret", tls: true)
    expect(described_class.new(redis_url: "rediss://h:1").native_options).to include(redis_tls: {}, redis_host: "h")
    expect(described_class.new(redis_url: "redis://h:1").native_options).to include(redis_tls: nil)
  end

  describe "redis_tls" do
    let(:pki) { SelfSigned.pki }

    after { FileUtils.rm_rf(pki[:dir]) }

    it "passes the files, server_name and verify to the native options" do
      tls = { ca_file: pki[:ca], cert_file: pki[:client_cert], key_file: pki[:client_key], server_name: "redis.internal" }
      config = described_class.new(redis_url: "rediss://10.0.0.1:6380", redis_tls: tls)
      expect(config.native_options[:redis_tls]).to eq(tls)
      expect(config.redis_tls_insecure?).to be(false)
      expect(described_class.new(redis_url: "rediss://h", redis_tls: { verify: false }).redis_tls_insecure?).to be(true)
    end

    it "fails at configure time on a file that does not exist, is no PEM, or a key that does not match" do
      missing = File.join(pki[:dir], "nope.pem")
      expect { described_class.new(redis_tls: { ca_file: missing }) }
        .to raise_error(ArgumentError, /redis_tls ca_file: ".*nope\.pem" does not exist/)
      expect { described_class.new(redis_tls: { cert_file: pki[:client_cert], key_file: missing }) }
        .to raise_error(ArgumentError, /key_file.*does not exist/)
      expect { described_class.new(redis_tls: { ca_path: pki[:ca] }) }.to raise_error(ArgumentError, /ca_path.*not a directory/)
      junk = File.join(pki[:dir], "junk.pem")
      File.write(junk, "not a certificate\n")
      expect { described_class.new(redis_tls: { ca_file: junk }) }
        .to raise_error(ArgumentError, /redis_tls: cannot load the CA certificates .*junk\.pem/)
      expect { described_class.new(redis_tls: { cert_file: pki[:client_cert], key_file: pki[:server_key] }) }
        .to raise_error(ArgumentError, /cannot load the client key .*server\.key: key values mismatch/)
      expect { described_class.new(redis_tls: { key_file: pki[:client_key] }) }.to raise_error(ArgumentError, /needs cert_file/)
      expect { described_class.new(redis_tls: { verify: "no" }) }.to raise_error(ArgumentError, /verify must be true or false/)
      expect { described_class.new(redis_tls: { cafile: pki[:ca] }) }.to raise_error(ArgumentError, /unknown redis_tls setting :cafile/)
    end

    it "leaves Spillway's configuration as it was when a redis_tls file is missing" do
      Spillway.configure(redis_url: "rediss://127.0.0.1:1", redis_tls: { ca_file: pki[:ca] })
      expect { Spillway.configure(redis_tls: { ca_file: "/nonexistent/ca.pem" }) }
        .to raise_error(ArgumentError, %r{redis_tls ca_file: "/nonexistent/ca.pem" does not exist})
      expect(Spillway.config.redis_tls).to eq(ca_file: pki[:ca])
    end

    it "refuses redis_tls with a plaintext redis:// URL (never plaintext by mistake)" do
      expect { described_class.new(redis_url: "redis://:pw@h:1", redis_tls: { ca_file: pki[:ca] }) }
        .to raise_error(ArgumentError, %r{redis_tls is set but the Redis URL redis://:\[password\]@h:1 is not rediss://})
      expect { described_class.new(redis_tls: { ca_file: pki[:ca] }, redis_url: "unix:///tmp/r.sock") }
        .to raise_error(ArgumentError, /not rediss/)
    end
  end

  it "refuses unknown schemes with a message that says what to do" do
    expect { parse("http://h") }.to raise_error(ArgumentError, /unsupported Redis URL/)
    expect { parse("redis://h/notanumber") }.to raise_error(ArgumentError)
    expect { parse("unix://") }.to raise_error(ArgumentError, /without a socket path/)
  end

  it "checks every limit at the boundary and names it" do
    expect { described_class.new(heartbeat: 0) }.to raise_error(ArgumentError, /heartbeat must be between/)
    expect { described_class.new(max_channels_per_connection: 5000) }.to raise_error(ArgumentError, /max_channels_per_connection/)
    expect { described_class.new(max_message_bytes: 0) }.to raise_error(ArgumentError, /max_message_bytes/)
    expect { described_class.new(outbox_limit: 10) }.to raise_error(ArgumentError, /outbox_limit/)
    expect { described_class.new(namespace: "a b") }.to raise_error(ArgumentError, /namespace/)
    expect { described_class.new(headers: { "X-Bad" => "a\r\nb" }) }.to raise_error(ArgumentError, /invalid header/)
    expect { described_class.new(no_such: 1) }.to raise_error(ArgumentError, /unknown Spillway setting :no_such/)
  end

  it "takes the slow-stream limits, write_timeout as the old name of max_lag" do
    c = described_class.new(max_lag: 2.5, memory_limit: 64 * 1024 * 1024, outbox_limit: 65_536)
    expect(c.native_options).to include(max_lag_ms: 2500, memory_limit: 64 * 1024 * 1024, outbox_limit: 65_536)
    expect(described_class.new.native_options).to include(max_lag_ms: 10_000, memory_limit: 256 * 1024 * 1024)
    old = described_class.new(write_timeout: 30)
    expect([old.max_lag, old.write_timeout]).to eq([30.0, 30.0])
    expect(old.native_options).to include(max_lag_ms: 30_000)
    expect(old.native_options).not_to have_key(:write_timeout_ms)
    expect { described_class.new(max_lag: 0) }.to raise_error(ArgumentError, /max_lag must be between/)
    expect { described_class.new(write_timeout: 0) }.to raise_error(ArgumentError, /max_lag must be between/)
    expect { described_class.new(memory_limit: 1000) }.to raise_error(ArgumentError, /memory_limit must be between/)
  end

  it "derives max_connections from the open-file limit" do
    soft, = Process.getrlimit(:NOFILE)
    expect(described_class.new.max_connections_effective).to eq([soft - 256, 16].max)
    expect(described_class.new(max_connections: 7).max_connections_effective).to eq(7)
  end

  it "validates channel names" do
    c = described_class.new(max_channel_length: 8)
    expect(c.valid_channel?("chat:42")).to be(true)
    expect(c.valid_channel?("a/b=c+d")).to be(true)
    ["", "x" * 9, "sp ace", "new\nline", "é", "\xff".dup.force_encoding("UTF-8"), nil, :sym].each do |bad|
      expect(c.valid_channel?(bad)).to be(false), bad.inspect
    end
  end

  it "turns the settings into native options" do
    opts = described_class.new(heartbeat: 2.5, redis_url: "redis://h:1/3", headers: { "Access-Control-Allow-Origin" => "*" }).native_options
    expect(opts).to include(heartbeat_ms: 2500, redis_host: "h", redis_port: 1, redis_db: 3, namespace: "spillway",
                            extra_headers: "Access-Control-Allow-Origin: *\r\n")
  end

  it "passes log_interval to the hub in milliseconds (10 s by default, 0 allowed) and checks its range" do
    expect(described_class.new.native_options).to include(log_interval_ms: 10_000)
    expect(described_class.new(log_interval: 0.25).native_options).to include(log_interval_ms: 250)
    expect(described_class.new(log_interval: 0).native_options).to include(log_interval_ms: 0)
    expect { described_class.new(log_interval: -1) }.to raise_error(ArgumentError, /log_interval must be between 0 and/)
    expect { described_class.new(log_interval: "often") }.to raise_error(ArgumentError)
  end

  describe "postgres_url", if: Spillway::Native::POSTGRES do
    it "selects the PostgreSQL backend, ahead of Redis, with its native options" do
      c = described_class.new(postgres_url: "postgres://u:secret@db:5433/app", redis_url: "redis://r/0", backlog_size: 0)
      expect(c.backend).to eq(:postgres)
      opts = c.native_options
      expect(opts[:postgres_conninfo]).to eq("postgres://u:secret@db:5433/app")
      expect(opts[:namespace]).to eq("spillway")
      expect(opts[:backlog_size]).to eq(1) # the row of a message too big for its notification is read back
      expect(opts).not_to have_key(:redis_host)
    end

    it "takes a libpq keyword string, and SPILLWAY_POSTGRES_URL" do
      expect(described_class.new(postgres_url: "host=/tmp dbname=app").backend).to eq(:postgres)
      old = ENV["SPILLWAY_POSTGRES_URL"]
      ENV["SPILLWAY_POSTGRES_URL"] = "postgresql://localhost/app"
      expect(described_class.new.backend).to eq(:postgres)
    ensure
      old ? ENV["SPILLWAY_POSTGRES_URL"] = old : ENV.delete("SPILLWAY_POSTGRES_URL")
    end

    it "refuses another scheme (without showing the password) and a namespace too long for a schema" do
      expect { described_class.new(postgres_url: "mysql://u:hunter2@h/db") }
        .to raise_error(ArgumentError, /unsupported PostgreSQL URL "mysql:\/\/u:\[password\]@h\/db"/)
      c = described_class.new(postgres_url: "postgres://h/db", namespace: "n" * 64)
      expect { c.native_options }.to raise_error(ArgumentError, /longer than 63 bytes/)
    end
  end
end
