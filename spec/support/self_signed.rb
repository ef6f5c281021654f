# frozen_string_literal: true

require "openssl"
require "tmpdir"

# A self-signed certificate for 127.0.0.1, written to a new temporary
# directory, for Puma's ssl_bind: { key: path, cert: path }.
module SelfSigned
  def self.files
    dir = Dir.mktmpdir("spillway-tls")
    key = OpenSSL::PKey::RSA.new(2048)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = 1
    cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=127.0.0.1")
    cert.public_key = key.public_key
    cert.not_before = Time.now - 60
    cert.not_after = Time.now + 3600
    cert.sign(key, OpenSSL::Digest.new("SHA256"))
    paths = { key: File.join(dir, "key.pem"), cert: File.join(dir, "cert.pem") }
    File.write(paths[:key], key.to_pem)
    File.write(paths[:cert], cert.to_pem)
    paths
  end
end
