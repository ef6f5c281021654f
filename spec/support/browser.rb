# frozen_string_literal: true

# Headless Chromium (Debian's `chromium`) driven over CDP by ferrum, for
# the specs whose client is a browser (Turbo, the dashboard).
module Browser
  def self.start
    require "ferrum"
    Ferrum::Browser.new(browser_path: ENV.fetch("CHROMIUM", "/usr/bin/chromium"), headless: true, timeout: 20,
                        process_timeout: 40, browser_options: { "no-sandbox" => nil })
  end
end
