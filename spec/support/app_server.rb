# frozen_string_literal: true

require "json"
require "net/http"
require "tmpdir"
require "rbconfig"

# A real Puma serving spec/fixtures/app.ru on a free port.
#
#   server = AppServer.new(config: { heartbeat: 1 }, threads: "1:1").start
#   server.get("/stats")
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

  attr_reader :port, :pid, :log

  # puma: :gem (the Gemfile's Puma), :debian (Debian's Puma 5.6 and Rack 2)
  # or :webrick (rackup's WEBrick: no full hijack).
  def initialize(config: {}, middleware: {}, threads: "1:1", workers: 0, preload: false, puma: :gem,
                 env: {}, tls: nil, rackup: FIXTURE)
    @config = config
    @middleware = middleware
    @threads = threads
    @workers = workers
    @preload = preload
    @puma = puma
    @extra_env = env
    @tls = tls
    @rackup = rackup
    @port = free_port
    @log = File.join(Dir.mktmpdir("spillway-puma"), "puma.log")
  end

  def start
    env = {
      "SPILLWAY_CONFIG" => JSON.generate(@config),
      "SPILLWAY_MIDDLEWARE" => JSON.generate(@middleware),
      "RUBYLIB" => File.join(ROOT, "lib")
    }.merge(@extra_env)
    bind = @tls ? "ssl://127.0.0.1:#{port}?key=#{@tls[:key]}&cert=#{@tls[:cert]}&verify_mode=none" : "tcp://127.0.0.1:#{port}"
    args = ["-t", @threads, "-b", bind, "--environment", "production"]
    args += ["-w", @workers.to_s] if @workers.positive?
    args << "--preload" if @preload
    args << @rackup
    cmd =
      case @puma
      when :debian then [DEBIAN_PUMA, *args]
      when :webrick then [RbConfig.ruby, "-S", "rackup", "-s", "webrick", "-o", "127.0.0.1", "-p", port.to_s, @rackup]
      else [RbConfig.ruby, "-S", "puma", *args]
      end
    cmd = valgrind_prefix + cmd if ENV["SPILLWAY_VALGRIND"] && @puma != :debian
    spawn_env = @puma == :debian ? env.merge(DEBIAN_ONLY_GEMS) : env
    runner = @puma == :debian && defined?(Bundler) ? Bundler.method(:with_unbundled_env) : ->(&b) { b.call }
    runner.call do
      @pid = Process.spawn(spawn_env, *cmd, out: @log, err: @log, pgroup: true)
    end
    wait_until(timeout: ENV["SPILLWAY_VALGRIND"] ? 12 : 30, interval: 0.05, message: "Puma on #{port} (log: #{log_tail})") { ready? }
    self
  end

  VALGRIND_SUPP = File.join(ROOT, "spec", "valgrind-ruby.supp")

  # memcheck over the server; its log is checked when the server stops.
  def valgrind_prefix
    @valgrind_log = File.join(File.dirname(@log), "valgrind.%p.log")
    ["valgrind", "--undef-value-errors=no", "--leak-check=no", "--suppressions=#{VALGRIND_SUPP}",
     "--log-file=#{@valgrind_log}"]
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

    begin
      Process.kill("TERM", -@pid)
      wait_until(timeout: timeout, interval: 0.02, message: "Puma to exit") { Process.waitpid(@pid, Process::WNOHANG) }
    rescue Waiting::Timeout
      Process.kill("KILL", -@pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    @pid = nil
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

  def publish(channel, data, event: nil, idempotency_key: nil)
    q = "channel=#{URI.encode_www_form_component(channel)}"
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
    File.exist?(@log) ? File.read(@log).lines.last(20).join : "(no log)"
  end
end
