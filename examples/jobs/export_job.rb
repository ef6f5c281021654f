# frozen_string_literal: true

require "json"
require "fileutils"
require "spillway"

# A background job as you would write it for Sidekiq or Resque: it knows
# nothing about HTTP, it just publishes its progress on "export:<id>".
#
# How it runs here (env WORKER):
#   thread (default)  a Ruby thread in the web process, like Sidekiq's
#                     threads or an in-process queue (works with either backend)
#   fork              a forked child process per job, like Resque; its
#                     publishes reach the web process through Redis, so it
#                     needs REDIS_URL. Spillway notices the fork by itself:
#                     the child drops the parent's hub and opens its own link.
class ExportJob
  DIR = File.expand_path("tmp/exports", __dir__)
  STEPS = 20          # a progress event every 5 %
  STEP_SECONDS = 0.2  # a 4-second job

  def self.channel(id) = "export:#{id}"
  def self.csv_path(id) = File.join(DIR, "#{id}.csv")

  def self.worker
    ENV.fetch("WORKER", "thread")
  end

  # Checked at boot: a fork worker with the memory backend would publish
  # into its own process, where no browser listens.
  def self.check_setup!
    case worker
    when "thread" then nil
    when "fork"
      if Spillway.config.backend == :memory
        abort "WORKER=fork needs REDIS_URL: the memory backend is per process, so a forked job's " \
              "progress would never reach the web process's streams."
      end
    else abort "WORKER must be thread or fork, got #{worker.inspect}"
    end
  end

  # Called by the web request. Returns at once; the job runs elsewhere.
  def self.enqueue(id, rows)
    case worker
    when "fork"
      pid = fork do
        ok = begin
          new(id, rows).perform
          true
        rescue StandardError => e
          warn "export #{id} failed: #{e.class}: #{e.message}"
          false
        end
        exit!(ok ? 0 : 1) # exit! skips the at_exit handlers inherited from the web server
      end
      Process.detach(pid)
    else
      Thread.new { new(id, rows).perform }.name = "export-#{id}"
    end
  end

  # Last known state, for pages that come back after the stream's backlog is
  # gone (event: reset). nil for an unknown id. An unfinished job whose
  # process is gone (a restart kills thread workers) is "stalled".
  def self.status(id)
    s = JSON.parse(File.read(File.join(DIR, "#{id}.json")))
    if %w[queued running].include?(s["state"]) && !alive?(s["pid"])
      s.merge!("state" => "stalled", "error" => "the worker died before the job finished (server restart?)")
    end
    s
  rescue Errno::ENOENT
    nil
  end

  def self.alive?(pid)
    Process.kill(0, Integer(pid))
    true
  rescue Errno::ESRCH, ArgumentError, TypeError
    false
  rescue Errno::EPERM
    true
  end

  def self.write_status(id, status)
    FileUtils.mkdir_p(DIR)
    path = File.join(DIR, "#{id}.json")
    File.write("#{path}.tmp", JSON.generate(status.merge(pid: Process.pid)))
    File.rename("#{path}.tmp", path)
  end

  def initialize(id, rows)
    @id = id
    @rows = rows
  end

  def perform
    FileUtils.mkdir_p(DIR)
    tmp = "#{self.class.csv_path(@id)}.part"
    File.open(tmp, "w") do |f|
      f.puts "id,customer,amount_cents"
      written = 0
      (1..STEPS).each do |step|
        upto = @rows * step / STEPS
        (written + 1..upto).each { |i| f.puts "#{i},customer-#{i % 997},#{(i * 7919) % 100_000}" }
        written = upto
        sleep STEP_SECONDS # the "slow" part of a real export
        progress(step * 100 / STEPS, written)
      end
    end
    File.rename(tmp, self.class.csv_path(@id))
    done = { state: "done", percent: 100, rows: @rows, url: "/exports/#{@id}.csv",
             bytes: File.size(self.class.csv_path(@id)), worker: "#{self.class.worker} (pid #{Process.pid})" }
    self.class.write_status(@id, done)
    Spillway.publish(self.class.channel(@id), done, event: "done")
  rescue StandardError => e
    failed = { state: "failed", error: "#{e.class}: #{e.message}" }
    self.class.write_status(@id, failed)
    Spillway.publish(self.class.channel(@id), failed, event: "failed")
    raise
  end

  private

  def progress(percent, rows)
    status = { state: "running", percent: percent, rows: rows }
    self.class.write_status(@id, status)
    Spillway.publish(self.class.channel(@id), status, event: "progress")
  end
end
