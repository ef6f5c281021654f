# frozen_string_literal: true

require "spec_helper"
require "tmpdir"
require "open3"

# `gem build` and `gem install` of the built gem, into an empty GEM_HOME,
# compile the extension against the system hiredis and load it.
RSpec.describe "Packaging" do
  it "builds a gem that installs and works" do
    root = File.expand_path("..", __dir__)
    Dir.mktmpdir do |dir|
      out, status = Open3.capture2e("gem", "build", File.join(root, "spillway.gemspec"), "--output",
                                    File.join(dir, "spillway.gem"), chdir: root)
      expect(status).to be_success, out
      env = { "GEM_HOME" => File.join(dir, "gems"), "GEM_PATH" => File.join(dir, "gems"), "RUBYOPT" => nil,
              "BUNDLE_GEMFILE" => nil, "RUBYLIB" => nil }
      out, status = Open3.capture2e(env, "gem", "install", "--local", "--no-document", File.join(dir, "spillway.gem"))
      expect(status).to be_success, out
      script = 'require "spillway"; id = Spillway.publish("c", "x"); puts Spillway::VERSION, id; Spillway.shutdown'
      out, status = Open3.capture2e(env, RbConfig.ruby, "-e", script, chdir: dir)
      expect(status).to be_success, out
      expect(out.lines.first.strip).to eq(Spillway::VERSION)
      expect(out.lines.last).to match(/\A\d+-\d+\n\z/)
      # Everything the gem loads at run time is in it (the generator's template and client.js too).
      installed = Dir[File.join(dir, "gems", "gems", "spillway-*")].first
      Dir.chdir(root) do
        (Dir["lib/**/*.rb"] + Dir["lib/**/*.tt"] + Dir["lib/**/*.js"]).reject { |f| f.end_with?(".so") }.each do |f|
          expect(File).to exist(File.join(installed, f)), f
        end
      end
    end
  end
end
