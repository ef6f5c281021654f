# frozen_string_literal: true

require "openssl"
require "tmpdir"

# Certificates for the TLS specs, written to a new temporary directory.
#
#   SelfSigned.files      one self-signed certificate for 127.0.0.1, for
#                         Puma's ssl_bind: { key: path, cert: path }
#   SelfSigned.pki        a small PKI for TLS to Redis: a CA, a server
#                         certificate it signed for 127.0.0.1 and localhost,
#                         a client certificate, an expired server
#                         certificate, one for another name, and a second CA
#                         that signed none of them (a "wrong CA")
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

  # Paths (Strings) of PEM files, by name: :ca, :wrong_ca, :server_cert,
  # :server_key, :client_cert, :client_key, :expired_cert, :expired_key,
  # :wrong_name_cert, :wrong_name_key, and :dir.
  def self.pki
    dir = Dir.mktmpdir("spillway-pki")
    files = { dir: dir }
    ca_key, ca = authority("/CN=Spillway Test CA")
    _wrong_key, wrong = authority("/CN=Some Other CA")
    File.write(files[:ca] = File.join(dir, "ca.pem"), ca.to_pem)
    File.write(files[:wrong_ca] = File.join(dir, "wrong_ca.pem"), wrong.to_pem)
    now = Time.now
    {
      server: ["/CN=localhost", "DNS:localhost,IP:127.0.0.1", now - 60, now + 86_400, "serverAuth"],
      client: ["/CN=spillway-client", nil, now - 60, now + 86_400, "clientAuth"],
      expired: ["/CN=localhost", "DNS:localhost,IP:127.0.0.1", now - 7200, now - 3600, "serverAuth"],
      wrong_name: ["/CN=redis.example.com", "DNS:redis.example.com", now - 60, now + 86_400, "serverAuth"]
    }.each do |name, (subject, san, from, to, usage)|
      key, cert = leaf(ca_key, ca, subject, san, from, to, usage)
      File.write(files[:"#{name}_cert"] = File.join(dir, "#{name}.pem"), cert.to_pem)
      File.write(files[:"#{name}_key"] = File.join(dir, "#{name}.key"), key.to_pem)
    end
    files
  end

  def self.authority(subject)
    key = OpenSSL::PKey::EC.generate("prime256v1")
    cert = base_cert(key, subject, OpenSSL::X509::Name.parse(subject), Time.now - 3600, Time.now + 86_400)
    ext = OpenSSL::X509::ExtensionFactory.new(cert, cert)
    cert.add_extension(ext.create_extension("basicConstraints", "CA:TRUE", true))
    cert.add_extension(ext.create_extension("keyUsage", "keyCertSign,cRLSign", true))
    cert.add_extension(ext.create_extension("subjectKeyIdentifier", "hash"))
    cert.sign(key, OpenSSL::Digest.new("SHA256"))
    [key, cert]
  end

  def self.leaf(ca_key, ca, subject, san, from, to, usage)
    key = OpenSSL::PKey::EC.generate("prime256v1")
    cert = base_cert(key, subject, ca.subject, from, to)
    ext = OpenSSL::X509::ExtensionFactory.new(ca, cert)
    cert.add_extension(ext.create_extension("basicConstraints", "CA:FALSE", true))
    cert.add_extension(ext.create_extension("keyUsage", "digitalSignature,keyEncipherment", true))
    cert.add_extension(ext.create_extension("extendedKeyUsage", usage))
    cert.add_extension(ext.create_extension("subjectAltName", san)) if san
    cert.sign(ca_key, OpenSSL::Digest.new("SHA256"))
    [key, cert]
  end

  def self.base_cert(key, subject, issuer, from, to)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = OpenSSL::BN.rand(64)
    cert.subject = OpenSSL::X509::Name.parse(subject)
    cert.issuer = issuer
    cert.public_key = key
    cert.not_before = from
    cert.not_after = to
    cert
  end
end
