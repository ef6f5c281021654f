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
    expect(parse("redis://127.0.0.1")).to eq(host: "127.0.0.1", port: 6379, path: nil, db: 0, username: nil, password: nil)
    expect(parse("redis://:p%40ss@h:1/5")).to include(host: "h", port: 1, db: 5, username: nil, password: "p@ss")
    expect(parse("redis://alice:secret@h/0")).to include(username: "alice", password: "secret")
    expect(parse("redis://[::1]:6380")).to include(host: "::1", port: 6380)
  end

  it "parses unix:// URLs" do
    expect(parse("unix:///run/redis.sock?db=4")).to include(path: "/run/redis.sock", db: 4, password: nil)
    expect(parse("unix://:pw@/run/redis.sock")).to include(path: "/run/redis.sock", password: "pw")
  end

  it "refuses TLS and unknown schemes with a message that says what to do" do
    expect { parse("rediss://h") }.to raise_error(ArgumentError, /not supported yet.*stunnel/)
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
end
