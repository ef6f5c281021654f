# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"

# Multisite (Spillway::Site) in this process, memory backend: publish,
# subscribe, backlog, last_id, busiest_channels and tokens per site. The
# integration side (streams through the middleware, Redis with two Pumas)
# is spec/integration/multisite_spec.rb.
RSpec.describe "Multisite (memory backend, in process)" do
  SITE_KEY = :spillway_site_spec

  let(:log) { StringIO.new }

  before do
    Spillway.configure(logger: Logger.new(log), backlog_size: 5, secret: "s" * 48,
                       site_id: -> { Thread.current[SITE_KEY] })
  end

  after { Thread.current[SITE_KEY] = nil }

  def as_site(site)
    Thread.current[SITE_KEY] = site
    yield
  ensure
    Thread.current[SITE_KEY] = nil
  end

  def pop(queue)
    wait_until(message: "an entry in the queue") { !queue.empty? }
    queue.pop
  end

  it "validates site ids and the site_id setting" do
    expect(Spillway::Site.check!(nil)).to be_nil
    expect(Spillway::Site.check!(:tenant_1)).to eq("tenant_1")
    expect(Spillway::Site.check!(42)).to eq("42")
    expect(Spillway::Site.check!("a" * 64)).to eq("a" * 64)
    expect { Spillway::Site.check!("a" * 65) }.to raise_error(ArgumentError, /1 to 64 characters/)
    ["", "a|b", "a b", "é", "a/b", "a\n"].each do |bad|
      expect { Spillway::Site.check!(bad) }.to raise_error(ArgumentError, /invalid site_id/)
    end
    expect { Spillway::Site.check!(-1) }.to raise_error(ArgumentError, /got -1/)
    expect { Spillway::Site.check!(1.5) }.to raise_error(ArgumentError, /got Float/)
    expect { Spillway::Site.check!(["a"]) }.to raise_error(ArgumentError, /got Array/)
    expect { Spillway.configure(site_id: "a") }.to raise_error(ArgumentError, /site_id must respond to #call/)
    expect { Spillway::Middleware.new(nil, site_id: "a") }.to raise_error(ArgumentError, /site_id must respond to #call/)
    # The configured proc's answer is checked at every call that uses it.
    Spillway.configure(site_id: -> { "no|pipes" })
    expect { Spillway.publish("chat", "x") }.to raise_error(ArgumentError, /invalid site_id "no\|pipes"/)
    expect { Spillway.last_id("chat") }.to raise_error(ArgumentError, /invalid site_id/)
    expect { Spillway.subscribe("chat") { nil } }.to raise_error(ArgumentError, /invalid site_id/)
    expect { Spillway.sign("chat") }.to raise_error(ArgumentError, /invalid site_id/)
    # An explicit site_id: overrides it; nil is "no site".
    expect(Spillway.publish("chat", "x", site_id: nil)).to match(/\A\d+-\d+\z/)
  end

  it "keeps publish, backlog and last_id apart per site; /global/ is shared; no site is the old channel" do
    c0 = Spillway.cursor
    a = as_site("a") { Spillway.publish("chat", "A1") }
    b = Spillway.publish("chat", "B1", site_id: "b")
    g = as_site("a") { Spillway.publish("/global/news", "G") }
    n = Spillway.publish("chat", "N")
    expect(as_site("a") { Spillway.backlog("chat", since: c0) }.map { |m| [m.channel, m.data, m.id] })
      .to eq([["chat", "A1", a]])
    expect(Spillway.backlog("chat", since: c0, site_id: "b").map(&:data)).to eq(["B1"])
    expect(Spillway.backlog("chat", since: c0).map(&:data)).to eq(["N"])
    expect(Spillway.backlog("/global/news", since: c0, site_id: "b").map { |m| [m.channel, m.id] })
      .to eq([["/global/news", g]])
    expect(as_site("a") { Spillway.last_id("chat") }).to eq(a)
    expect(Spillway.last_id("chat", site_id: :b)).to eq(b)
    expect(Spillway.last_id("chat")).to eq(n)
    expect(Spillway.last_id("chat", site_id: "c")).to be_nil
    expect(Spillway.last_id("/global/news", site_id: "c")).to eq(g)
  end

  it "subscribes per site: only the site's messages, and a reset only for the site that outran its backlog" do
    c0 = Spillway.cursor
    %w[B1 B2].each { |d| Spillway.publish("orders", d, site_id: "b") }
    as_site("a") { 20.times { |i| Spillway.publish("orders", "A#{i}") } }
    got_b = Queue.new
    resets_b = Queue.new
    sub_b = as_site("b") do
      Spillway.subscribe("orders", last_id: c0, on_reset: ->(r) { resets_b << r }) { |m| got_b << m }
    end
    got_a = Queue.new
    Spillway.subscribe("orders", last_id: c0, site_id: "a", on_reset: ->(r) { got_a << r }) { |m| got_a << m }
    expect(pop(got_b).data).to eq("B1")
    expect(pop(got_b).data).to eq("B2")
    first_a = pop(got_a)
    expect(first_a).to be_reset
    expect(first_a.channel).to eq("orders")
    expect { Spillway.backlog("orders", since: c0, site_id: "a") }
      .to raise_error(Spillway::ResetError) { |e| expect(e.channel).to eq("orders") }
    Spillway.publish("orders", "A-live", site_id: "a")
    Spillway.publish("orders", "B-live", site_id: "b")
    m = pop(got_b)
    expect([m.channel, m.data]).to eq(%w[orders B-live])
    expect(sub_b.channel).to eq("orders")
    wait_until(message: "A-live") { !got_a.empty? && got_a.pop.data == "A-live" }
    expect(got_b).to be_empty
    expect(resets_b).to be_empty
    # One process's busiest channels: public names, the site beside them.
    busiest = Spillway.busiest_channels(100).select { |c| c[:name] == "orders" }
    expect(busiest.map { |c| c[:site_id] }.sort).to eq(%w[a b])
  end

  it "scopes idempotency keys to the site" do
    a = Spillway.publish("orders", "A", idempotency_key: "k1", site_id: "a")
    b = Spillway.publish("orders", "B", idempotency_key: "k1", site_id: "b")
    expect(b).not_to eq(a)
    expect(Spillway.publish("orders", "A again", idempotency_key: "k1", site_id: "a")).to eq(a)
    expect(Spillway.publish("orders", "none", idempotency_key: "k1")).not_to eq(a)
  end

  it "signs tokens for a site that only that site's middleware accepts" do
    config = Spillway.config
    token = as_site("a") { Spillway.sign(%w[chat news]) }
    expect(Spillway::Token.verify(token, secret: config.secret, config: config, site: "a")).to eq(%w[chat news])
    expect { Spillway::Token.verify(token, secret: config.secret, config: config, site: "b") }
      .to raise_error(Spillway::Token::Invalid, "signed for another site")
    expect { Spillway::Token.verify(token, secret: config.secret, config: config) }
      .to raise_error(Spillway::Token::Invalid, "signed for another site")
    plain = Spillway.sign("chat", site_id: nil)
    expect(Spillway::Token.verify(plain, secret: config.secret, config: config)).to eq(%w[chat])
    expect { Spillway::Token.verify(plain, secret: config.secret, config: config, site: "a") }
      .to raise_error(Spillway::Token::Invalid, "signed for another site")
    # The site is signed: editing it breaks the signature.
    version, payload, mac = token.split(".")
    forged = Base64.urlsafe_encode64(Base64.urlsafe_decode64(payload).sub("|a ", "|b "), padding: false)
    expect { Spillway::Token.verify("#{version}.#{forged}.#{mac}", secret: config.secret, config: config, site: "b") }
      .to raise_error(Spillway::Token::Invalid, "bad signature")
  end
end
