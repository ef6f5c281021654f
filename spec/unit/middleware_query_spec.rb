# frozen_string_literal: true

require "spec_helper"
require "uri"

# The middleware reads a stream's query string without URI.decode_www_form
# (which builds every pair); what it reads must be exactly what that reads.
# authorize sees the channels it took from the query; it answers false, so
# nothing reaches a hub.
RSpec.describe "Spillway::Middleware reading the query string" do
  QUERY_SPEC_MAX = 4
  ALPHABET = ["channel", "lastEventId", "=", "&", "%", "+", "a", "b", "%3A", "%3a", ":", "%63hannel", "chan%6Eel",
              "%zz", "%F", "%FF", "%C3%A9", "%2B", "%26", "%3D", "x", "channel=", "channel=a", ";", "=="].freeze

  before { Spillway.configure(max_channels_per_connection: QUERY_SPEC_MAX) }

  def middleware(seen, param: "channel")
    Spillway::Middleware.new(->(_env) { [404, {}, []] }, param: param,
                                                           authorize: ->(_env, channels) { seen << channels && false })
  end

  def answer(mw, query)
    mw.call("PATH_INFO" => "/stream", "REQUEST_METHOD" => "GET", "QUERY_STRING" => query)
  end

  # What the request must yield, read the reference way.
  def expected(query, param)
    pairs = URI.decode_www_form(query)
    channels = pairs.filter_map { |k, v| v if k == param }.uniq
    return 400 if channels.empty? || channels.size > QUERY_SPEC_MAX || channels.any? { |c| !Spillway.config.valid_channel?(c) }

    channels
  end

  it "takes the same channels as URI.decode_www_form on 20,000 random queries" do
    rng = Random.new(RSpec.configuration.seed)
    seen = []
    mw = middleware(seen)
    granted = 0
    20_000.times do
      query = Array.new(rng.rand(0..9)) { ALPHABET.sample(random: rng) }.join
      want = expected(query, "channel")
      seen.clear
      status, = answer(mw, query)
      if want == 400
        expect(status).to eq(400), query
        expect(seen).to be_empty
      else
        granted += 1
        expect(status).to eq(403), query
        expect(seen).to eq([want]), query
      end
    end
    # The alphabet makes valid requests common enough to mean something.
    expect(granted).to be > 300
  end

  it "decodes names and values: + is a space, %XX a byte, a stray % stays" do
    seen = []
    mw = middleware(seen, param: "c")
    expect(answer(mw, "%63=a%3Ab&c=a:b&c=%61:%62&c=x%2By").first).to eq(403)
    expect(seen).to eq([["a:b", "x+y"]])
    expect(answer(mw, "c=a+b").first).to eq(400) # "a b": no spaces in a channel name
    expect(answer(mw, "c=a%zz").first).to eq(400) # "a%zz" stays as it is and is not a name
    expect(answer(mw, "c=%C3%A9").first).to eq(400)
  end

  it "refuses a query that is not ASCII, and stops reading one past the channel limit" do
    seen = []
    mw = middleware(seen)
    status, _, body = answer(mw, "channel=\u00e9".b)
    expect(status).to eq(400)
    expect(body.join).to include("malformed query string")
    status, _, body = answer(mw, (1..1_000).map { |i| "channel=c#{i}" }.join("&"))
    expect(status).to eq(400)
    expect(body.join).to include("max_channels_per_connection is #{QUERY_SPEC_MAX}")
    expect(seen).to be_empty
  end

  it "refuses a param name the query reader cannot match" do
    ["", "a=b", "a&b", "a%20", "a+b"].each do |bad|
      expect { Spillway::Middleware.new(->(_) {}, param: bad) }.to raise_error(ArgumentError, /param/)
    end
  end
end
