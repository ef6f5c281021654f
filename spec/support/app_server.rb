# frozen_string_literal: true

require "json"
require "net/http"
require "tmpdir"
require "rbconfig"

# A real app server serving spec/fixtures/app.ru on a free port: Puma by
# default, or another one (server:).
#
#   server = AppServer.new(config: { heartbeat: 1 }, threads: "1:1").start
#   server.get("/stats")
#   AppServer.new(server: :unicorn, workers: 2, preload: true).start
class AppServer
  include Waiting

  ROOT = File.expand_path("../..", __dir__)
  FIXTURE = File.join(ROOT, "spec", "fixtures", "app.ru")
  DEBIAN_PUMA = "/usr/bin/puma"
  # Only the gems Debian's packages installed (Puma 5.6, Rack 2.2): what a
  # machine with `apt-get install puma ruby-rack` and no Bundler has.
  DEBIAN_ONLY_GEMS = {
    "BUNDLE_GEMFILE" => nil, "RUBYOPT" => nil, "BUNDLER_SETUP" => nil, "GEM_HOME" => "/nonexistent",
    "GEM_PATH" => %w[/usr/lib/ruby/gems/3.1.0 /usr/share/rubygems-integration/3.1.0
                     /usr/share/rubygems-integration/all /usr/lib/x86_64-linux-gnu/rubygems-integration/3.1.0].join(":")
  }.freeze
  # puma: (the older keyword) names a server too.
  PUMA_KEYWORD = { gem: :puma, debian: :debian_puma, webrick: :webrick }.freeze
  SERVERS = %i[puma debian_puma webrick unicorn pitchfork falcon passenger].freeze

  attr_reader :port, :pid, :log, :server

  # server: :puma (the Gemfile's Puma), :debian_puma (Debian's Puma 5.6 and
  # Rack 2), :webrick (rackup's WEBrick: no full hijack), :unicorn,
  # :pitchfork, :falcon (forked container) or :passenger (Passenger
  # Standalone, builtin engine). puma: :gem, :debian or :webrick is the
  # older spelling of the first three.
  #
  # workers: 0 is a single process (Puma, WEBrick) or one worker (Unicorn,
  # Pitchfork, Falcon, Passenger). preload: Puma's --preload, Unicorn's
  # preload_app, Passenger's smart spawning.
  # passenger_args: more options for `passenger start` (e.g.
  # --force-max-concurrent-requests-per-process 0).
  # refork_after: Pitchfork's [requests, ...] (off by default).
  # after_fork: true makes the server's worker hook call
  # Spillway.after_fork explicitly (Puma's on_worker_boot, Unicorn's
  # after_fork, Pitchfork's after_worker_fork, Falcon has none).
  def initialize(config: {}, middleware: {}, threads: "1:1", workers: 0, preload: false, puma: :gem,
                 server: nil, after_fork: false, refork_after: nil, env: {}, tls: nil, rackup: FIXTURE,
                 passenger_args: [])
    @config = config
    @middleware = middleware
    @threads = threads
    @workers = workers
    @preload = preload
    @server = server || PUMA_KEYWORD.fetch(puma)
    raise ArgumentError, "unknown server #{@server.inspect} (#{SERVERS.join(', ')})" unless SERVERS.include?(@server)
    raise ArgumentError, "tls: only on Puma" if tls && @server != :puma

    @after_fork = after_fork
    @refork_after = refork_after
    @extra_env = env
    @tls = tls
    @rackup = rackup
    @passenger_args = passenger_args
    @port = free_port
    @dir = Dir.mktmpdir("spillway-#{@server}")
    @log = File.join(@dir, "server.log")
  end

  def start
    env = {
      "SPILLWAY_CONFIG" => JSON.generate(@config),
      "SPILLWAY_MIDDLEWARE" => JSON.generate(@middleware),
      "RUBYLIB" => File.join(ROOT, "lib")
    }.merge(@extra_env)
    cmd = command
    cmd = valgrind_prefix + cmd if ENV["SPILLWAY_VALGRIND"] && !%i[debian_puma passenger].include?(@server)
    spawn_env = @server == :debian_puma ? env.merge(DEBIAN_ONLY_GEMS) : env
    runner = @server == :debian_puma && defined?(Bundler) ? Bundler.method(:with_unbundled_env) : ->(&b) { b.call }
    runner.call do
      # Its own process group: stop signals the server and all its workers.
      # Passenger writes its own log (and its apps' output) to @log.
      out = @server == :passenger ? File.join(@dir, "start.log") : @log
      @pid = Process.spawn(spawn_env, *cmd, out: out, err: out, pgroup: true)
    end
    wait_until(timeout: ENV["SPILLWAY_VALGRIND"] || @server == :passenger ? 60 : 30, interval: 0.05,
               message: "#{@server} on #{port} (log: #{log_tail})") do
      # A server that could not start says why at once, not at the deadline.
      raise "#{@server} exited at start:\n#{log_tail}" if exited?

      ready?
    end
    self
  end

  # The command line that starts the server.
  def command
    case @server
    when :puma, :debian_puma then puma_command
    when :webrick then [RbConfig.ruby, "-S", "rackup", "-s", "webrick", "-o", "127.0.0.1", "-p", port.to_s, @rackup]
    when :unicorn then [RbConfig.ruby, "-S", "unicorn", "-c", write_config(unicorn_config), "-E", "production", @rackup]
    when :pitchfork then [RbConfig.ruby, "-S", "pitchfork", "-c", write_config(pitchfork_config), @rackup]
    when :falcon
      # One forked container process per worker, as in production (never
      # the master itself serving).
      [RbConfig.ruby, "-S", "falcon", "serve", "--forked", "-n", [@workers, 1].max.to_s,
       "-b", "http://127.0.0.1:#{port}", "-c", @rackup]
    when :passenger then passenger_command
    end
  end

  # Passenger Standalone with its builtin engine (no Nginx to download):
  # `passenger start` stays in the foreground and, on TERM, stops the
  # watchdog it started (which daemonizes, leaving the process group), the
  # core (which proxies every request to an app process over a Unix
  # socket) and the app processes. Its agent must be built already
  # (bin/setup): --no-install-runtime makes a missing one an error, not a
  # build. Smart spawning (preload) forks app processes from a preloader.
  def passenger_command
    n = [@workers, 1].max.to_s
    args = ["start", File.dirname(@rackup), "--engine", "builtin", "--no-install-runtime", "--no-compile-runtime",
            "--address", "127.0.0.1", "--port", port.to_s, "--environment", "production",
            "--app-type", "rack", "--startup-file", @rackup,
            "--log-file", @log, "--pid-file", passenger_pid_file,
            "--max-pool-size", n, "--min-instances", n, "--spawn-method", @preload ? "smart" : "direct",
            "--disable-security-update-check", "--disable-anonymous-telemetry"]
    [RbConfig.ruby, "-S", "passenger", *args, *@passenger_args]
  end

  def passenger_pid_file
    File.join(@dir, "passenger.pid")
  end

  # The watchdog's pid, nil when it is not running.
  def passenger_watchdog
    pid = Integer(File.read(passenger_pid_file).strip)
    Process.kill(0, pid)
    pid
  rescue Errno::ENOENT, Errno::ESRCH, ArgumentError
    nil
  end

  def puma_command
    bind = @tls ? "ssl://127.0.0.1:#{port}?key=#{@tls[:key]}&cert=#{@tls[:cert]}&verify_mode=none" : "tcp://127.0.0.1:#{port}"
    args = ["-t", @threads, "-b", bind, "--environment", "production"]
    args += ["-w", @workers.to_s] if @workers.positive?
    args << "--preload" if @preload
    args += ["-C", write_config(after_fork_hook("on_worker_boot"))] if @after_fork
    args << @rackup
    @server == :debian_puma ? [DEBIAN_PUMA, *args] : [RbConfig.ruby, "-S", "puma", *args]
  end

  # Unicorn: a master and its workers; preload_app loads the app (and with
  # BOOT_PUBLISH its Redis connection) in the master, before the forks.
  def unicorn_config
    <<~RUBY
      worker_processes #{[@workers, 1].max}
      listen "127.0.0.1:#{port}"
      preload_app #{@preload ? 'true' : 'false'}
      timeout 30
      #{after_fork_hook('after_fork')}
    RUBY
  end

  # Pitchfork: workers forked from a mold (reforking only with
  # refork_after). setpgid off:
  # the workers stay in the server's process group, which stop signals.
  def pitchfork_config
    <<~RUBY
      worker_processes #{[@workers, 1].max}
      listen "127.0.0.1:#{port}"
      timeout 30
      setpgid false
      #{"refork_after #{@refork_after.inspect}" if @refork_after}
      #{after_fork_hook('after_worker_fork')}
    RUBY
  end

  def after_fork_hook(name)
    return "" unless @after_fork

    # The hook's own require: without preload the app is not loaded yet.
    <<~RUBY
      #{name} do |_server, _worker|
        require "spillway"
        Spillway.after_fork
        File.write(File.join(#{@dir.inspect}, "after_fork.\#{Process.pid}"), "")
      end
    RUBY
  end

  def write_config(text)
    path = File.join(@dir, "#{@server}.conf.rb")
    File.write(path, text)
    path
  end

  # The pids whose explicit after_fork hook ran (after_fork: true).
  def after_fork_pids
    Dir[File.join(@dir, "after_fork.*")].map { |f| Integer(File.extname(f).delete(".")) }
  end

  # { pid => stats } of `count` workers at once: `count` requests sent
  # together, each holding its worker for a moment (the fixture's ?hold=),
  # so each lands on a different worker of a server whose workers serve
  # one request at a time. Tried again until they did (a worker that
  # serves several at once, Falcon's, may take two), on a deadline.
  # Passenger's core (unlimited concurrency, least busy first) counts a
  # process's open streams as requests in flight: a process holding streams
  # gets one of the requests only once the others are as busy, so more are
  # sent at once there.
  def worker_stats(count, timeout: 20, hold: 0.2)
    last = nil
    fanout = @server == :passenger ? count * 4 : count
    wait_until(timeout: timeout, interval: 0, message: "#{count} workers answering at once") do
      answers = Array.new(fanout) do
        Thread.new do
          JSON.parse(get("/stats?hold=#{hold}").body, symbolize_names: true)
        rescue SystemCallError, IOError, Net::ReadTimeout, JSON::ParserError
          nil # a worker that died with the request (a spec killed it)
        end
      end
      last = answers.map(&:value).compact.to_h { |s| [s[:pid], s] }
      last.size == count && last
    end
  end

  # Waits until the block, given worker_stats(count), returns truthy.
  def wait_workers(count, timeout: 20, message: "workers")
    last = nil
    wait_until(timeout: timeout, interval: 0, message: message) do
      last = worker_stats(count, timeout: timeout)
      yield(last) && last
    end
  rescue Waiting::Timeout => e
    raise Waiting::Timeout, "#{e.message}; workers: #{last&.transform_values { |s| s.slice(:connections, :fallback_total) }}"
  end

  VALGRIND_SUPP = File.join(ROOT, "spec", "valgrind-ruby.supp")

  # memcheck over the server; its log is checked when the server stops.
  def valgrind_prefix
    @valgrind_log = File.join(File.dirname(@log), "valgrind.%p.log")
    ["valgrind", "--undef-value-errors=no", "--leak-check=no", "--suppressions=#{VALGRIND_SUPP}",
     "--log-file=#{@valgrind_log}"]
  end

  # A Passenger watchdog still running once `passenger start` is gone (it
  # was killed) is stopped by its pid; its core and apps follow it.
  def stop_watchdog(pid, timeout)
    alive = lambda do
      Process.kill(0, pid)
      true
    rescue Errno::ESRCH
      false
    end
    return unless alive.call

    Process.kill("TERM", pid)
    wait_until(timeout: timeout, interval: 0.05, message: "Passenger's watchdog #{pid} to exit") { !alive.call }
  rescue Waiting::Timeout
    Process.kill("KILL", pid)
  rescue Errno::ESRCH
    nil
  end

  def check_valgrind!
    return unless @valgrind_log

    Dir[@valgrind_log.sub("%p", "*")].each do |f|
      text = File.read(f)
      summary = text[/ERROR SUMMARY: (\d+) errors/, 1]
      raise "valgrind found errors in the server (#{f}):\n#{text.lines.last(60).join}" if summary && summary != "0"
    end
  end

  def ready?
    return false if exited?

    get("/ping").body == "pong"
  rescue SystemCallError, IOError, Net::ReadTimeout, OpenSSL::SSL::SSLError
    false
  end

  def exited?
    Process.waitpid(@pid, Process::WNOHANG) ? true : false
  rescue Errno::ECHILD
    true
  end

  def stop(timeout: 15)
    return unless @pid

    watchdog = passenger_watchdog if @server == :passenger
    begin
      Process.kill("TERM", -@pid)
      wait_until(timeout: timeout, interval: 0.02, message: "#{@server} to exit") { Process.waitpid(@pid, Process::WNOHANG) }
    rescue Waiting::Timeout
      Process.kill("KILL", -@pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    @pid = nil
    stop_watchdog(watchdog, timeout) if watchdog
    check_valgrind!
  end

  def http
    h = Net::HTTP.new("127.0.0.1", port)
    h.open_timeout = 5
    h.read_timeout = 10
    if @tls
      h.use_ssl = true
      h.verify_mode = OpenSSL::SSL::VERIFY_NONE
    end
    h
  end

  def get(path, headers = {})
    http.start { |h| h.get(path, headers) }
  end

  def post(path, body = "")
    http.start { |h| h.post(path, body, "Content-Type" => "application/octet-stream") }
  end

  # targets: user_ids:, group_ids:, client_ids: (Arrays); async: true
  def publish(channel, data, event: nil, idempotency_key: nil, async: false, **targets)
    q = "channel=#{URI.encode_www_form_component(channel)}"
    q << "&async=1" if async
    targets.each { |k, ids| q << "&#{k}=#{URI.encode_www_form_component(ids.join(','))}" }
    q << "&event=#{URI.encode_www_form_component(event)}" if event
    q << "&key=#{URI.encode_www_form_component(idempotency_key)}" if idempotency_key
    res = post("/publish?#{q}", data)
    raise "publish failed: #{res.code} #{res.body}" unless res.code == "200"

    res.body
  end

  def stats
    JSON.parse(get("/stats").body, symbolize_names: true)
  end

  def log_tail
    logs = [@log, File.join(@dir, "start.log")].select { |f| File.exist?(f) }
    logs.empty? ? "(no log)" : logs.map { |f| File.read(f).lines.last(20).join }.join("\n")
  end
end
