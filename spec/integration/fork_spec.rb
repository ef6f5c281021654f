# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Forking" do
  describe "puma -w 2 --preload" do
    before(:all) do
      @redis = RedisServer.new.start
      @server = AppServer.new(config: { redis_url: @redis.url }, threads: "1:1", workers: 2, preload: true,
                              env: { "BOOT_PUBLISH" => "1" }).start
    end

    after(:all) do
      @server&.stop
      @redis&.cleanup
    end

    it "starts a hub lazily in each worker; both serve streams; a publish from anywhere reaches all" do
      clients = SSESwarm.new(Array.new(40) { SSEClient.open(@server.port, "fork:all") })
      clients.wait_all(message: "heads") { |c| c.status == 200 }
      # /stats lands on either worker: collect both until their streams add up.
      seen = {}
      wait_until(timeout: 20, message: "both workers holding the 40 streams") do
        s = @server.stats
        seen[s[:pid]] = s[:connections]
        seen.size == 2 && seen.values.sum == 40 && seen.values.all?(&:positive?)
      end
      master_pid = @server.pid
      expect(seen.keys).not_to include(master_pid)

      Spillway.configure(redis_url: @redis.url)
      ids = Array.new(5) { |i| Spillway.publish("fork:all", "n#{i}") }
      # Publishes from the workers, which inherited the master's connection.
      ids += Array.new(4) { |i| @server.publish("fork:all", "w#{i}") }
      clients.wait_all(message: "9 messages everywhere") { |c| c.events.size >= 9 }
      clients.clients.each do |c|
        expect(c.data).to eq(%w[n0 n1 n2 n3 n4 w0 w1 w2 w3])
        expect(c.events.last.last_event_id).to eq(ids.last)
      end
      expect(@redis.call("XLEN", "spillway:s:boot")).to eq(1)
    ensure
      clients&.close_all
    end

    it "gives the streams of every worker a last retry hint when Puma stops" do
      clients = SSESwarm.new(Array.new(20) { SSEClient.open(@server.port, "fork:bye") })
      clients.wait_all(message: "heads") { |c| c.status == 200 }
      seen = {}
      wait_until(timeout: 20, message: "both workers holding streams") do
        s = @server.stats
        seen[s[:pid]] = s[:connections]
        seen.size == 2 && seen.values.sum == 20
      end
      before = clients.clients.map { |c| c.raw.scan("retry:").size }
      @server.stop
      clients.wait_all(message: "every stream closed") { |c| c.eof? }
      after = clients.clients.map { |c| c.raw.scan("retry:").size }
      expect(after.zip(before).map { |a, b| a - b }).to all(eq(1))
    ensure
      clients&.close_all
    end
  end

  describe "puma -w 2 --preload, memory backend, a hub already running in the master" do
    it "lets each worker start its own hub" do
      server = AppServer.new(threads: "1:1", workers: 2, preload: true, env: { "BOOT_PUBLISH" => "1" }).start
      clients = SSESwarm.new(Array.new(10) { SSEClient.open(server.port, "mem:fork") })
      clients.wait_all(message: "heads") { |c| c.status == 200 }
      # Each POST lands on one worker and reaches that worker's streams only.
      n = 0
      clients.wait_all(timeout: 20, message: "a message on every stream") do |c|
        server.publish("mem:fork", "m#{n += 1}") if c == clients.clients.first
        c.events.any?
      end
      pids = {}
      wait_until(timeout: 20, message: "both workers answering") do
        s = server.stats
        pids[s[:pid]] = s[:running]
        pids.size == 2
      end
      expect(pids.keys).not_to include(server.pid)
    ensure
      clients&.close_all
      server&.stop
    end
  end

  describe "in one process" do
    it "a child closes what it inherited, so the parent's clients still see EOF when the parent lets go" do
      server = TCPServer.new("127.0.0.1", 0)
      client = TCPSocket.new("127.0.0.1", server.addr[1])
      sock = server.accept
      hub = Spillway.hub
      expect(hub.reserve).to be(true)
      hub.attach(sock, ["inherit"], nil, Spillway::Native::Hub::ATTACH_HEAD)
      sock.close
      wait_until { Spillway.stats[:connections] == 1 }

      reader, writer = IO.pipe
      pid = fork do
        reader.close
        # A fresh start in the child: nothing of the parent's hub is used.
        stats = Spillway.stats
        Spillway.publish("inherit", "from the child")
        writer.write(JSON.generate(connections: stats[:connections], child: Spillway.stats[:connections]))
        writer.close
        sleep 30 # stays alive while the parent closes its stream
        exit!(0)
      end
      writer.close
      child = JSON.parse(reader.read, symbolize_names: true)
      expect(child).to eq(connections: 0, child: 0)

      Spillway.shutdown # closes the stream in the parent
      data = +""
      deadline = monotonic + 5
      while monotonic < deadline
        chunk = client.read_nonblock(4096, exception: false)
        break if chunk.nil? # EOF while the child is still alive

        data << chunk if chunk.is_a?(String)
        sleep 0.01
      end
      expect(chunk).to be_nil
      expect(data).not_to include("from the child")
      expect(data).to include("retry:")
    ensure
      Process.kill("KILL", pid) if pid
      Process.wait(pid) if pid
      client&.close
      server&.close
    end

    it "publishes from a forked child that leaves with exit! (Redis)" do
      redis = RedisServer.new.start
      Spillway.configure(redis_url: redis.url)
      Spillway.publish("jobs", "from the parent") # the parent has a pooled connection now
      pid = fork do
        Spillway.publish("jobs", "from the child")
        exit!(0)
      end
      Process.wait(pid)
      expect($?.success?).to be(true)
      entries = redis.call("XRANGE", "spillway:s:jobs", "-", "+")
      expect(entries.map { |e| e[1][1].split("\n").last }).to eq(["data: from the parent", "data: from the child"])
      # The parent's connection still works: the child never used it.
      expect(Spillway.publish("jobs", "again")).to match(/\A\d+-\d+\z/)
      expect(Spillway.stats[:publisher][:connects]).to eq(1)
    ensure
      Spillway.shutdown
      redis&.cleanup
    end
  end
end
