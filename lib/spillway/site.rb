# frozen_string_literal: true

module Spillway
  # Multisite: several sites (tenants) of one app on one hub and one Redis
  # namespace, each with its own channels under the same public names.
  #
  #   Spillway.configure(site_id: -> { Current.site })        # publishes
  #   use Spillway::Middleware, site_id: ->(env) { env["HTTP_HOST"] } # streams
  #
  # A site's channel is named "<site>|<channel>" inside the hub and in Redis
  # (SEPARATOR is in neither a public channel name nor a site id, so a name
  # splits one way only), so sites never share a stream, a backlog, a
  # resume, a reset or a Redis key. A channel under GLOBAL ("/global/news")
  # keeps its name and reaches every site. Clients only ever see the public
  # name: the hub strips the site from the `channel:` line and from a reset's
  # list. Without a site (no site_id, or one that returns nil) every name
  # stays as it is, as before multisite: same channels, same Redis keys.
  module Site
    SEPARATOR = "|"
    GLOBAL = "/global/"
    # Native::Hub's SPILLWAY_MAX_SITE_LEN: a site id is at most this long.
    MAX_LENGTH = 64
    PATTERN = /\A[A-Za-z0-9_.\-]{1,#{MAX_LENGTH}}\z/.freeze
    # The default of the site_id: keyword of Spillway.publish and friends:
    # the configured site_id proc's answer. nil means "no site".
    CURRENT = Object.new.tap { |o| def o.inspect = "Spillway::Site::CURRENT" }.freeze

    module_function

    # A site id as a String, or nil. ArgumentError for anything but nil, a
    # String, a Symbol or a non-negative Integer, or a text outside PATTERN.
    def check!(site, what = "site_id")
      return nil if site.nil?

      text = case site
             when String then site
             when Symbol then site.to_s
             when Integer then site >= 0 ? site.to_s : nil
             end
      unless text
        raise ArgumentError, "#{what} must be a String, a Symbol, a non-negative Integer or nil, " \
                             "got #{site.is_a?(Integer) ? site : site.class}"
      end
      unless text.match?(PATTERN)
        shown = text.bytesize > 80 ? "#{text.byteslice(0, 80).inspect}... (#{text.bytesize} bytes)" : text.inspect
        raise ArgumentError, "invalid #{what} #{shown}: 1 to #{MAX_LENGTH} characters of A-Z a-z 0-9 _ . -"
      end

      text.frozen? ? text : text.dup.freeze
    end

    # The site of a call: site (CURRENT: the configured proc's answer),
    # checked.
    def resolve(site, config = Spillway.config)
      site = config.site_id&.call if CURRENT.equal?(site)
      check!(site)
    end

    # The hub's name of a public channel for site.
    def internal(channel, site)
      return channel if site.nil? || global?(channel)

      "#{site}#{SEPARATOR}#{channel}"
    end

    def global?(channel)
      channel.start_with?(GLOBAL)
    end

    # [public name, site or nil] of a hub's channel name.
    def split(name)
      site, sep, channel = name.partition(SEPARATOR)
      sep.empty? ? [name, nil] : [channel, site]
    end
  end
end
