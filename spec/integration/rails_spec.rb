# frozen_string_literal: true

require "spec_helper"
require "open3"

# The Railtie in a real (minimal) Rails app, booted in a process of its own.
RSpec.describe "Rails integration" do
  def boot(secret_key_base, check: nil)
    out, err, status = Open3.capture3({ "SECRET_KEY_BASE" => secret_key_base, "CHECK_TOKEN" => check },
                                      RbConfig.ruby, "-Ilib", File.expand_path("../fixtures/rails_app.rb", __dir__))
    expect(status).to be_success, err
    JSON.parse(out.lines.last)
  end

  it "takes config.spillway settings and derives the token secret from secret_key_base" do
    a = boot("a" * 128)
    expect(a["heartbeat"]).to eq(7.0)
    expect(a["middleware"]).to be(true)
    expect(a["secret_bytes"]).to eq(64)
    expect(a["from_key_generator"]).to be(true)
    expect(a["secret_is_not_the_base"]).to be(true)
    expect(a["channels"]).to eq(["chat:1"])

    # The same secret_key_base (another process of the app) takes the token;
    # another one does not.
    expect(boot("a" * 128, check: a["token"])["check"]).to eq(["chat:1"])
    expect(boot("b" * 128, check: a["token"])["check"]).to eq("bad signature")
  end
end
