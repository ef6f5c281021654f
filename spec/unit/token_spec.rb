# frozen_string_literal: true

require "spec_helper"

RSpec.describe Spillway::Token do
  UNIT_TOKEN_SECRET = "s" * 64

  let(:config) { Spillway::Configuration.new(secret: UNIT_TOKEN_SECRET, max_channels_per_connection: 4) }

  def sign(channels, **kw)
    described_class.sign(channels, expires_in: 60, secret: UNIT_TOKEN_SECRET, config: config, **kw)
  end

  def verify(token, secret: UNIT_TOKEN_SECRET, **kw)
    described_class.verify(token, secret: secret, config: config, **kw)
  end

  it "opens exactly the channels it was signed for, until it expires" do
    now = Time.now.to_i
    token = sign(["chat:42", :"user:7", "chat:42"], now: now)
    expect(token).to match(/\As1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}\z/) # URL-safe as it is
    expect(verify(token, now: now)).to eq(%w[chat:42 user:7])
    expect(verify(token, now: now + 59)).to eq(%w[chat:42 user:7])
    expect { verify(token, now: now + 60) }.to raise_error(described_class::Invalid, "expired")
  end

  it "refuses every change to a token: each byte flipped, each truncation, payloads swapped" do
    token = sign(%w[public:a])
    other = sign(%w[private:admin])
    token.bytesize.times do |i|
      forged = token.dup
      forged.setbyte(i, forged.getbyte(i) ^ 0x01)
      expect { verify(forged) }.to raise_error(described_class::Invalid), "byte #{i}"
    end
    (0...token.bytesize).each do |n|
      expect { verify(token[0, n]) }.to raise_error(described_class::Invalid), "first #{n} bytes"
    end
    # The payload of one token under the signature of another.
    v, payload, = other.split(".")
    expect { verify([v, payload, token.split(".").last].join(".")) }.to raise_error(described_class::Invalid, "bad signature")
    expect { verify("#{token}.x") }.to raise_error(described_class::Invalid)
    expect { verify(token.sub("s1.", "s2.")) }.to raise_error(described_class::Invalid)
    expect { verify(nil) }.to raise_error(described_class::Invalid)
    expect { verify("x" * 20_000) }.to raise_error(described_class::Invalid)
  end

  it "is tied to its secret" do
    token = sign(%w[public:a])
    expect { verify(token, secret: "t" * 64) }.to raise_error(described_class::Invalid, "bad signature")
  end

  it "refuses to sign what no stream could open" do
    expect { sign([]) }.to raise_error(ArgumentError, /at least one channel/)
    expect { sign(["bad name"]) }.to raise_error(ArgumentError, /invalid channel/)
    expect { sign(%w[a b c d e]) }.to raise_error(ArgumentError, /max_channels_per_connection/)
    expect { sign(%w[a], expires_in: 0) }.to raise_error(ArgumentError, /expires_in/)
    expect { sign(%w[a], expires_in: 400 * 86_400) }.to raise_error(ArgumentError, /expires_in/)
  end

  it "is refused when the configuration no longer allows its channels" do
    token = sign(%w[a b c d])
    fewer = Spillway::Configuration.new(secret: UNIT_TOKEN_SECRET, max_channels_per_connection: 2)
    expect { described_class.verify(token, secret: UNIT_TOKEN_SECRET, config: fewer) }
      .to raise_error(described_class::Invalid, /does not allow/)
  end

  describe "Spillway.sign and the secret setting" do
    after { Spillway.configure(secret: nil) }

    it "needs a secret of at least 32 bytes and never shows it" do
      Spillway.configure(secret: nil)
      expect { Spillway.sign("a") }.to raise_error(Spillway::Error, /needs a secret/)
      expect { Spillway.configure(secret: "short") }.to raise_error(ArgumentError, /at least 32 bytes/)
      Spillway.configure(secret: UNIT_TOKEN_SECRET)
      token = Spillway.sign("a", expires_in: 10)
      expect(verify(token)).to eq(["a"])
      expect(Spillway.config.inspect).not_to include(UNIT_TOKEN_SECRET)
      expect(Spillway.config.inspect).to include("secret=[set]")
    end
  end
end
