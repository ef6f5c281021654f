# frozen_string_literal: true

require "openssl"
require "base64"

module Spillway
  # Signed stream tokens: a page that may stream some channels gets a token
  # naming them, and the middleware opens exactly those for whoever presents
  # it, without calling authorize.
  #
  #   token = Spillway.sign(["chat:42", "user:7"], expires_in: 3600)
  #   # <script> new EventSource("/stream?token=" + token) </script>
  #
  # A token is "s1.<payload>.<mac>": the payload is the expiry (Unix seconds)
  # and the channel names, base64url; the mac is HMAC-SHA256 over
  # "s1.<payload>" with a key derived from the configured secret (never the
  # secret itself, so an app's secret_key_base signs nothing else that could
  # pass for a token). Everything in it is URL-safe. A token signed for a
  # site (multisite, Spillway::Site) has "<expiry>|<site>" for its expiry:
  # it opens that site's channels, and only where the middleware's site_id
  # answers that site; a token without one only where it answers nil.
  module Token
    VERSION = "s1"
    # Longer than any token a valid configuration can sign: 1,024 names of
    # 1,024 bytes would be larger, but the middleware's query string is
    # capped at 16 KiB anyway.
    MAX_BYTES = 16 * 1024
    MAX_EXPIRES_IN = 366 * 86_400
    KEY_INFO = "spillway stream token v1"

    Invalid = Class.new(StandardError)

    module_function

    # A token for channels (a name or an Array of names) that expires
    # expires_in seconds after now.
    def sign(channels, expires_in:, secret:, config:, now: Time.now.to_i, site: nil)
      channels = Array(channels).map { |c| c.is_a?(Symbol) ? c.to_s : c }.uniq
      raise ArgumentError, "a stream token needs at least one channel" if channels.empty?

      bad = channels.find { |c| !config.valid_channel?(c) }
      raise ArgumentError, "invalid channel name #{bad.inspect}" if bad
      if channels.size > config.max_channels_per_connection
        raise ArgumentError, "#{channels.size} channels; max_channels_per_connection is #{config.max_channels_per_connection}"
      end

      expires_in = Float(expires_in)
      unless expires_in.positive? && expires_in <= MAX_EXPIRES_IN
        raise ArgumentError, "expires_in must be more than 0 and at most #{MAX_EXPIRES_IN} seconds, got #{expires_in}"
      end

      expiry = (now + expires_in.ceil).to_s
      expiry = "#{expiry}#{Site::SEPARATOR}#{Site.check!(site)}" if site
      body = "#{VERSION}.#{Base64.urlsafe_encode64("#{expiry} #{channels.join(' ')}", padding: false)}"
      "#{body}.#{mac(body, secret)}"
    end

    # The channels a token opens. Raises Invalid (with the reason a log may
    # show) for anything that is not an unexpired token this secret signed
    # for valid channel names, or one signed for a site other than site.
    def verify(token, secret:, config:, now: Time.now.to_i, site: nil)
      raise Invalid, "not a stream token" unless token.is_a?(String) && token.bytesize <= MAX_BYTES

      version, payload, given = token.split(".", -1)
      raise Invalid, "not a stream token" unless version == VERSION && payload && given && token.count(".") == 2

      want = mac("#{version}.#{payload}", secret)
      raise Invalid, "bad signature" unless given.bytesize == want.bytesize && OpenSSL.fixed_length_secure_compare(given, want)

      # Signed by us: what follows cannot fail on a token sign made, unless
      # the configuration changed since (shorter names, fewer channels).
      expiry, *channels = Base64.urlsafe_decode64(payload).split(" ", -1)
      expiry, sep, signed_for = expiry.partition(Site::SEPARATOR)
      raise Invalid, "expired" unless Integer(expiry, 10) > now
      raise Invalid, "signed for another site" unless (sep.empty? ? nil : signed_for) == site
      if channels.empty? || channels.size > config.max_channels_per_connection ||
         channels.any? { |c| !config.valid_channel?(c.force_encoding(Encoding::UTF_8)) }
        raise Invalid, "channels this configuration does not allow"
      end

      channels
    rescue ArgumentError
      raise Invalid, "malformed"
    end

    def mac(body, secret)
      key = OpenSSL::HMAC.digest("SHA256", secret, KEY_INFO)
      Base64.urlsafe_encode64(OpenSSL::HMAC.digest("SHA256", key, body), padding: false)
    end
  end
end
