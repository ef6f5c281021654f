# frozen_string_literal: true

# A background-job progress bar. Run it with `examples/run jobs` (README.md).
#
#   GET  /                 the page
#   POST /exports          rows=N -> starts a job; {id, channel, cursor}
#   GET  /exports/ID       the job's last known state (JSON)
#   GET  /exports/ID.csv   the result
#   GET  /stream?channel=export:ID&lastEventId=CURSOR   (Spillway::Middleware)
#
# The pattern: the request that starts the job publishes a first event
# ("queued") itself and hands its id to the page as the stream's cursor.
# The job may run ahead of the page (it often does); whatever it published
# before the stream connected is replayed from Spillway's backlog, in order.

require "json"
require "securerandom"
require "rack"
require "spillway"
require_relative "export_job"

Spillway.configure(redis_url: ENV["REDIS_URL"]) # nil: in-process memory backend
ExportJob.check_setup!

class ExportsApp
  ID = /\A[0-9a-f]{12}\z/.freeze
  MAX_ROWS = 1_000_000
  INDEX = File.read(File.join(__dir__, "index.html")).freeze

  def call(env)
    req = Rack::Request.new(env)
    case [req.request_method, req.path_info]
    in ["GET" | "HEAD", "/"] then [200, { "content-type" => "text/html; charset=utf-8" }, [INDEX]]
    in ["POST", "/exports"] then start(req)
    in ["GET", %r{\A/exports/(\h{12})\.csv\z}] then download(Regexp.last_match(1))
    in ["GET", %r{\A/exports/(\h{12})\z}] then status(Regexp.last_match(1))
    in ["GET", "/stats"] then json(200, Spillway.stats)
    else json(404, { error: "not found" })
    end
  end

  private

  def start(req)
    rows = req.POST["rows"].to_s
    rows = rows.empty? ? 50_000 : Integer(rows, 10, exception: false)
    return json(400, { error: "rows must be an integer from 1 to #{MAX_ROWS}" }) unless rows&.between?(1, MAX_ROWS)

    id = SecureRandom.hex(6)
    channel = ExportJob.channel(id)
    queued = { state: "queued", percent: 0, rows: 0 }
    ExportJob.write_status(id, queued)
    # Publish before the job can: this id is the page's cursor, and every
    # later event of this job is newer than it.
    cursor = Spillway.publish(channel, queued, event: "queued")
    ExportJob.enqueue(id, rows)
    json(202, { id: id, channel: channel, cursor: cursor, status_url: "/exports/#{id}" })
  rescue Spillway::Error => e
    # e.g. Redis unreachable: the job would run blind, so don't start it.
    json(503, { error: e.message })
  end

  def status(id)
    s = ExportJob.status(id)
    s ? json(200, s) : json(404, { error: "no such export" })
  end

  def download(id)
    path = ExportJob.csv_path(id)
    return json(404, { error: "no such file (yet)" }) unless File.file?(path)

    [200, { "content-type" => "text/csv", "content-disposition" => %(attachment; filename="export-#{id}.csv"),
            "content-length" => File.size(path).to_s }, File.open(path, "rb")]
  end

  def json(status, body)
    [status, { "content-type" => "application/json", "cache-control" => "no-store" }, [JSON.generate(body)]]
  end
end

use Spillway::Middleware, authorize: ->(_env, channels) { channels.all? { |c| c.match?(/\Aexport:\h{12}\z/) } }
run ExportsApp.new
