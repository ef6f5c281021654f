# frozen_string_literal: true

require "tmpdir"
require "fileutils"

# Redis Sentinel for the suite: a primary, a replica (--replicaof) and
# `count` sentinels (redis-server --sentinel, their config files in a temp
# dir), all on free ports, stopped by pid.
#
#   group = SentinelGroup.new.start
#   Spillway.configure(redis_sentinels: group.addresses, redis_sentinel_master: group.master)
#   group.failover!        # SENTINEL FAILOVER, waits for the new primary
#   group.kill_primary!    # SIGKILL the primary, waits for the sentinels' failover
class SentinelGroup
  include Waiting

  # One redis-server --sentinel.
  class Sentinel
    include Waiting

    attr_reader :port, :dir

    def initialize(master:, primary_port:, quorum:, down_after_ms:, failover_timeout_ms:)
      @dir = Dir.mktmpdir("spillway-sentinel")
      @port = free_port
      @conf = File.join(@dir, "sentinel.conf")
      File.write(@conf, <<~CONF)
        port #{@port}
        bind 127.0.0.1
        daemonize no
        protected-mode no
        dir #{@dir}
        logfile #{File.join(@dir, 'sentinel.log')}
        sentinel monitor #{master} 127.0.0.1 #{primary_port} #{quorum}
        sentinel down-after-milliseconds #{master} #{down_after_ms}
        sentinel failover-timeout #{master} #{failover_timeout_ms}
        sentinel parallel-syncs #{master} 1
      CONF
    end

    def start
      @pid = Process.spawn("redis-server", @conf, "--sentinel", out: File::NULL, err: File::NULL)
      wait_until(timeout: 20, message: "sentinel on #{port}") { ping }
      self
    end

    def address
      "127.0.0.1:#{port}"
    end

    def ping
      call("PING") == "PONG"
    rescue SystemCallError, RespClient::Error, IOError
      false
    end

    def call(*args)
      client = RespClient.new(port: port, timeout: 2)
      client.call(*args)
    ensure
      client&.close
    end

    def stop(signal = "TERM")
      return unless @pid

      Process.kill(signal, @pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    ensure
      @pid = nil
    end

    def log_tail
      path = File.join(dir, "sentinel.log")
      File.exist?(path) ? File.read(path).lines.last(15).join : "(no log)"
    end

    def cleanup
      stop
      FileUtils.rm_rf(dir)
    end
  end

  attr_reader :master, :nodes, :sentinels

  def initialize(master: "mymaster", count: 3, persistence: true, down_after_ms: 1000, failover_timeout_ms: 4000,
                 password: nil)
    @master = master
    @count = count
    @persistence = persistence
    @down_after_ms = down_after_ms
    @failover_timeout_ms = failover_timeout_ms
    @password = password
  end

  def start
    # min-replicas... off; a short repl-timeout so a killed peer is noticed.
    common = %w[--repl-timeout 5 --repl-diskless-sync no]
    common += ["--masterauth", @password] if @password
    primary = RedisServer.new(persistence: @persistence, password: @password, args: common).start
    replica = RedisServer.new(persistence: @persistence, password: @password,
                              args: common + ["--replicaof", "127.0.0.1", primary.port.to_s]).start
    @nodes = [primary, replica]
    wait_until(timeout: 20, message: "the replica in sync") { replica_in_sync?(replica) }
    @sentinels = Array.new(@count) do
      Sentinel.new(master: master, primary_port: primary.port, quorum: 2, down_after_ms: @down_after_ms,
                   failover_timeout_ms: @failover_timeout_ms)
    end
    if @password
      @sentinels.each { |s| File.write(File.join(s.dir, "sentinel.conf"), "sentinel auth-pass #{master} #{@password}\n", mode: "a") }
    end
    @sentinels.each(&:start)
    wait_settled
    self
  end

  def addresses
    sentinels.map(&:address)
  end

  # The [host, port] the first answering sentinel names.
  def master_addr(of = sentinels)
    of.each do |s|
      reply = s.call("SENTINEL", "get-master-addr-by-name", master)
      return [reply[0], Integer(reply[1])] if reply
    rescue SystemCallError, RespClient::Error, IOError
      next
    end
    nil
  end

  def primary
    port = master_addr&.last
    nodes.find { |n| n.port == port }
  end

  def role(node)
    node.call("ROLE").first
  rescue SystemCallError, RespClient::Error, IOError
    nil
  end

  def replica_in_sync?(node)
    info = node.call("INFO", "replication")
    info.include?("master_link_status:up") && !info.include?("master_sync_in_progress:1")
  rescue SystemCallError, RespClient::Error, IOError
    false
  end

  # Every sentinel knows the others, names the same primary, and sees a
  # replica that is up and linked: a failover can happen.
  def settled?
    addrs = sentinels.map { |s| master_addr([s]) }
    return false unless addrs.uniq.size == 1 && addrs.first

    sentinels.all? do |s|
      peers = s.call("SENTINEL", "sentinels", master)
      replicas = s.call("SENTINEL", "replicas", master).map { |r| r.each_slice(2).to_h }
      peers.size == @count - 1 &&
        replicas.any? { |r| r["flags"] == "slave" && r["master-link-status"] == "ok" && nodes.any? { |n| n.running? && n.port == Integer(r["port"]) } }
    end
  rescue SystemCallError, RespClient::Error, IOError
    false
  end

  def wait_settled(timeout: 30)
    wait_until(timeout: timeout, interval: 0.05, message: "the sentinels settled") { settled? }
  rescue Waiting::Timeout => e
    raise e, "#{e.message}: #{describe}"
  end

  # What the sentinels think, for a failure message.
  def describe
    sentinels.map do |s|
      replicas = s.call("SENTINEL", "replicas", master).map { |r| r.each_slice(2).to_h.slice("port", "flags", "master-link-status") }
      "#{s.port}: master #{master_addr([s]).inspect}, #{s.call('SENTINEL', 'sentinels', master).size} peers, replicas #{replicas}"
    end.join("; ") + "; roles #{nodes.map { |n| [n.port, role(n)] }}\n#{sentinels.first.log_tail}"
  rescue SystemCallError, RespClient::Error, IOError => e
    e.message
  end

  # SENTINEL FAILOVER: returns once every sentinel names the new primary and
  # it answers ROLE master.
  def failover!(timeout: 30)
    before = master_addr
    sentinels.first.call("SENTINEL", "FAILOVER", master)
    wait_new_primary(before, timeout)
  end

  # SIGKILL the primary: returns once the sentinels promoted the replica.
  def kill_primary!(timeout: 30)
    before = master_addr
    primary.kill
    wait_new_primary(before, timeout)
  end

  def wait_new_primary(before, timeout)
    wait_until(timeout: timeout, interval: 0.05, message: "a new primary after #{before.inspect} (#{sentinels.first.log_tail})") do
      addrs = sentinels.map { |s| master_addr([s]) }
      addrs.uniq.size == 1 && addrs.first != before && (node = nodes.find { |n| n.port == addrs.first.last }) && role(node) == "master"
    end
    primary
  end

  def cleanup
    (sentinels || []).each(&:cleanup)
    (nodes || []).each(&:cleanup)
  end
end
