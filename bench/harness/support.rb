# frozen_string_literal: true

# Part of bench/run.rb: waiting with deadlines, child processes, /proc, the
# JSON-line tools (loadgen, pubgen), and installing what the benchmark needs.

# ---------- waiting, processes, /proc ----------

def wait_until(what, timeout, interval: 0.05)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
  loop do
    r = yield
    return r if r
    raise "timed out after #{timeout}s waiting for #{what}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

    sleep interval
  end
end

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1]
ensure
  s&.close
end

def port_open?(port)
  Socket.tcp("127.0.0.1", port, connect_timeout: 0.5).close
  true
rescue SystemCallError, IOError
  false
end

def alive?(pid)
  Process.waitpid(pid, Process::WNOHANG).nil?
rescue Errno::ECHILD
  false
end

def stop_process(pid, grace: 5)
  return unless pid

  begin
    Process.kill("TERM", pid)
  rescue Errno::ESRCH
    return
  end
  begin
    wait_until("pid #{pid} to exit", grace) { !alive?(pid) }
  rescue RuntimeError
    begin
      Process.kill("KILL", pid)
      Process.waitpid(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end
end

def rss_kb(pid)
  File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+)/, 1].to_i
rescue Errno::ENOENT
  0
end

def threads_of(pid)
  File.read("/proc/#{pid}/status")[/^Threads:\s+(\d+)/, 1].to_i
rescue Errno::ENOENT
  0
end

# utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat).
def cpu_s(pid)
  return 0.0 unless pid

  f = File.read("/proc/#{pid}/stat").split(") ", 2)[1].split
  (f[11].to_i + f[12].to_i).to_f / CLK_TCK
rescue Errno::ENOENT
  0.0
end

# The CPU of a process and of its live children (Puma's workers).
def tree_cpu_s(pid)
  return 0.0 unless pid

  kids = File.read("/proc/#{pid}/task/#{pid}/children").split.map(&:to_i)
  cpu_s(pid) + kids.sum { |k| cpu_s(k) }
rescue Errno::ENOENT
  cpu_s(pid)
end

def established(port, dst: nil)
  filter = "( sport = :#{port} )"
  filter = "( sport = :#{port} and dst #{dst} )" if dst
  out = IO.popen(["ss", "-Htn", "state", "established", filter], &:read)
  out.lines.count { |l| !l.strip.empty? }
end

# A child speaking JSON lines on stdout (loadgen, pubgen).
class Tool
  attr_reader :pid, :lines

  def initialize(args, log_path, stdin: false)
    @stdin = stdin
    popen_opts = { err: [log_path, "a"] }
    popen_opts[:in] = "/dev/null" unless stdin # a loadgen that does not take commands reads nothing
    @io = IO.popen(args, stdin ? "r+" : "r", **popen_opts)
    @pid = @io.pid
    @buf = +""
    @lines = []
    @eof = false
  end

  def command(line)
    @io.write("#{line}\n")
    @io.flush
  end

  # Next JSON line (Hash) within timeout, or nil at EOF. Raises on timeout.
  def next_line(timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      if (i = @buf.index("\n"))
        line = @buf.slice!(0, i + 1).strip
        next if line.empty?

        h = JSON.parse(line) rescue { "raw" => line }
        @lines << h
        return h
      end
      return nil if @eof

      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "timed out after #{timeout}s reading from pid #{@pid}" if left <= 0

      next unless IO.select([@io], nil, nil, [left, 0.5].min)

      begin
        @buf << @io.read_nonblock(65_536)
      rescue EOFError
        @eof = true
      rescue IO::WaitReadable
        nil
      end
    end
  end

  def wait_event(name, timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      h = next_line([left, 0.001].max)
      raise "pid #{@pid} ended before #{name}" unless h
      return h if h["event"] == name
    end
  end

  # Reads to EOF (closing our end of its stdin first), returns the last JSON line.
  def finish(timeout)
    @io.close_write if @stdin && !@io.closed?
    last = nil
    begin
      while (h = next_line(timeout))
        last = h
      end
    rescue RuntimeError
      Process.kill("TERM", @pid) rescue nil
      while (h = next_line(10))
        last = h
      end
    end
    @io.close
    last
  end

  # For ensure blocks: a tool still running after an error is stopped.
  def close!
    return if @io.closed?

    Process.kill("KILL", @pid) rescue nil
    @io.close rescue nil
  end

  def kill9
    Process.kill("KILL", @pid)
  rescue Errno::ESRCH
    nil
  ensure
    @io.close rescue nil
  end
end

# ---------- setup ----------

def sh_ok(*cmd)
  system(*cmd, out: File::NULL, err: File::NULL)
end

def ensure_setup(opts, tmp)
  if opts.install
    need = []
    need << "redis-server" unless sh_ok("which", "redis-server")
    need << "nginx" unless sh_ok("which", "nginx")
    need << "libnginx-mod-nchan" unless File.exist?("/usr/lib/nginx/modules/ngx_nchan_module.so")
    need << "iproute2" unless sh_ok("which", "ss")
    need << "iptables" unless sh_ok("which", "iptables")
    unless need.empty?
      log "apt-get install -y #{need.join(' ')}"
      system("apt-get", "update", "-q") && system("apt-get", "install", "-y", "-q", *need) or
        abort "could not install #{need.join(' ')}"
    end
    env = { "BUNDLE_GEMFILE" => GEMFILE }
    unless system(env, "bundle", "check", out: File::NULL, err: File::NULL)
      log "bundle install (bench/Gemfile)"
      system(env, "bundle", "config", "set", "--local", "path", "vendor/bundle", chdir: BENCH) &&
        system(env, "bundle", "install", "--quiet", chdir: BENCH) or abort "bundle install failed"
    end
  end
  system("make", "-s", "-C", BENCH) or abort "building the C tools failed (make -C bench)"
  Process.setrlimit(:NOFILE, NOFILE, NOFILE) rescue Process.setrlimit(:NOFILE, Process.getrlimit(:NOFILE)[1])
  FileUtils.mkdir_p(tmp)
end

def mono
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

# One ordinary request (GET /ping) on a fresh connection, as a new browser
# tab would make it: ms from connect to the whole answer, or nil when it does
# not complete within timeout.
def ping_ms(port, timeout: 5)
  t0 = mono
  s = Socket.tcp("127.0.0.1", port, connect_timeout: timeout)
  s.write("GET /ping HTTP/1.1\r\nHost: 127.0.0.1:#{port}\r\nConnection: close\r\n\r\n")
  buf = +""
  loop do
    if (eoh = buf.index("\r\n\r\n"))
      len = buf[0, eoh][/^content-length:\s*(\d+)/i, 1]
      break if len && buf.bytesize >= eoh + 4 + len.to_i
    end
    left = t0 + timeout - mono
    return nil if left <= 0 || !IO.select([s], nil, nil, left)

    chunk = s.read_nonblock(65_536, exception: false)
    break if chunk.nil? # EOF: the answer is whatever came
    buf << chunk unless chunk == :wait_readable
  end
  return nil unless buf.start_with?("HTTP/1.1 200", "HTTP/1.0 200")

  ((mono - t0) * 1000).round(2)
rescue SystemCallError, IOError
  nil
ensure
  s&.close
end

# n ordinary requests one after the other: their times and a summary.
def ping_stats(port, n: 5)
  ms = Array.new(n) { ping_ms(port) }
  ok = ms.compact.sort
  { samples_ms: ms, p50_ms: ok[ok.size / 2], max_ms: ok.max, failed: ms.count(nil) }
end

# Server-side sockets to dst (an IPv4 address) the server has not let go of:
# ESTABLISHED, or CLOSE-WAIT (the client's FIN arrived, the server has not
# closed its end yet).
def held_sockets(port, dst)
  out = IO.popen(["ss", "-Htn", "state", "established", "state", "close-wait",
                  "( sport = :#{port} and dst #{dst} )"], &:read)
  out.lines.count { |l| !l.strip.empty? }
end
