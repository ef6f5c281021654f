# frozen_string_literal: true

require "tmpdir"

# Debian's nginx as a reverse proxy in front of an AppServer, with a config
# written into a temp dir, on a free port. buffered: proxy_buffering on and
# X-Accel-Buffering ignored, so a stream's bytes are held back (as by a
# buffering proxy that does what it likes).
class Nginx
  include Waiting

  BINARY = ENV.fetch("NGINX", "/usr/sbin/nginx")

  attr_reader :port

  def initialize(upstream_port, buffered: true)
    @upstream_port = upstream_port
    @buffered = buffered
    @port = free_port
    @dir = Dir.mktmpdir("spillway-nginx")
  end

  def config
    <<~CONF
      #{'user root;' if Process.uid.zero?}
      worker_processes 1;
      daemon off;
      pid #{@dir}/nginx.pid;
      error_log #{@dir}/error.log warn;
      events { worker_connections 256; }
      http {
        access_log #{@dir}/access.log;
        client_body_temp_path #{@dir}/body;
        proxy_temp_path #{@dir}/proxy;
        fastcgi_temp_path #{@dir}/fastcgi;
        uwsgi_temp_path #{@dir}/uwsgi;
        scgi_temp_path #{@dir}/scgi;
        server {
          listen 127.0.0.1:#{@port};
          location / {
            proxy_pass http://127.0.0.1:#{@upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 120s;
            proxy_buffering #{@buffered ? 'on' : 'off'};
            #{'proxy_ignore_headers X-Accel-Buffering;' if @buffered}
          }
        }
      }
    CONF
  end

  def start
    path = File.join(@dir, "nginx.conf")
    File.write(path, config)
    @pid = Process.spawn(BINARY, "-p", @dir, "-c", path, out: File.join(@dir, "out.log"), err: File.join(@dir, "out.log"))
    wait_until(timeout: 10, interval: 0.05, message: "nginx on #{@port} (#{log_tail})") do
      raise "nginx exited at start:\n#{log_tail}" if Process.waitpid(@pid, Process::WNOHANG)

      begin
        TCPSocket.new("127.0.0.1", @port).close
        true
      rescue SystemCallError
        false
      end
    end
    self
  end

  def stop
    return unless @pid

    Process.kill("QUIT", @pid)
    begin
      wait_until(timeout: 10, interval: 0.02, message: "nginx to exit") { Process.waitpid(@pid, Process::WNOHANG) }
    rescue Waiting::Timeout
      Process.kill("KILL", @pid)
      Process.wait(@pid)
    end
    @pid = nil
  rescue Errno::ESRCH, Errno::ECHILD
    @pid = nil
  end

  def log_tail
    %w[error.log out.log].map { |f| File.join(@dir, f) }.select { |f| File.exist?(f) }
                         .map { |f| File.read(f).lines.last(10).join }.join
  end
end
