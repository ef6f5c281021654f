# frozen_string_literal: true

require "mkmf"

# Build switches (environment):
#   SPILLWAY_WERROR=1     turn warnings into errors (CI)
#   SPILLWAY_SANITIZE=... build with -fsanitize=... (e.g. address,undefined)
#   SPILLWAY_DEBUG=1      debug output from the C core, -O0 -g3
#   --with-hiredis-dir=/opt/hiredis   a hiredis outside the system paths
#   --with-openssl-dir=/opt/openssl   an OpenSSL outside the system paths (rediss://)
#   --with-pq-dir=/opt/postgresql     a libpq outside the system paths (postgres_url)
#   SPILLWAY_NO_LIBPQ=1   build without the PostgreSQL backend even when libpq is there

_, hiredis_lib = dir_config("hiredis")
if hiredis_lib
  # Ahead of Ruby's own library directory: on Debian that is the multiarch
  # directory, which holds the system hiredis. And found again at run time.
  hiredis_lib.split(File::PATH_SEPARATOR).reverse_each { |dir| $DEFLIBPATH.unshift(dir) }
  hiredis_lib.split(File::PATH_SEPARATOR).each { |dir| $LDFLAGS << " -Wl,-rpath,#{dir}" }
end

INSTALL_HINT = <<~MSG

  Spillway needs the hiredis C library and its headers (0.14 or 1.x).
    Debian/Ubuntu:  sudo apt-get install libhiredis-dev
    Fedora/RHEL:    sudo dnf install hiredis-devel
    Alpine:         apk add hiredis-dev
    macOS:          brew install hiredis
  or point at your own build:  gem install spillway -- --with-hiredis-dir=/path/to/hiredis

MSG

OPENSSL_HINT = <<~MSG

  Spillway needs the OpenSSL library and its headers (1.1.1 or 3.x) for TLS to Redis (rediss://).
    Debian/Ubuntu:  sudo apt-get install libssl-dev
    Fedora/RHEL:    sudo dnf install openssl-devel
    Alpine:         apk add openssl-dev
    macOS:          brew install openssl@3
  or point at your own build:  gem install spillway -- --with-openssl-dir=/path/to/openssl

MSG

unless RUBY_PLATFORM.include?("linux")
  abort "\nSpillway's native hub uses epoll and eventfd and builds on Linux only (this is #{RUBY_PLATFORM}).\n"
end

found = pkg_config("hiredis")
found ||= have_library("hiredis", "redisReaderCreateWithFunctions", ["hiredis/hiredis.h"]) ||
          have_library("hiredis", "redisReaderCreateWithFunctions", ["hiredis.h"])
abort INSTALL_HINT unless found
# A real link check even when pkg-config answered: the .pc file may exist
# without the library (a broken -dev install).
unless have_func("redisReaderCreateWithFunctions", ["hiredis/hiredis.h"]) ||
       have_func("redisReaderCreateWithFunctions", ["hiredis.h"])
  abort INSTALL_HINT
end
have_header("hiredis/hiredis.h") || have_header("hiredis.h") || abort(INSTALL_HINT)

_, openssl_lib = dir_config("openssl")
if openssl_lib
  openssl_lib.split(File::PATH_SEPARATOR).reverse_each { |dir| $DEFLIBPATH.unshift(dir) }
  openssl_lib.split(File::PATH_SEPARATOR).each { |dir| $LDFLAGS << " -Wl,-rpath,#{dir}" }
end
# pkg-config first (it knows Homebrew's keg-only prefix and the multiarch
# paths), then the libraries by name; a real link check of both either way.
pkg_config("openssl")
have_library("crypto", "ERR_get_error", ["openssl/err.h"]) || abort(OPENSSL_HINT)
have_library("ssl", "SSL_CTX_new", ["openssl/ssl.h"]) || abort(OPENSSL_HINT)
have_func("SSL_read_ex", ["openssl/ssl.h"]) || abort(OPENSSL_HINT + "  (OpenSSL 1.1.1 or later is needed)\n")

# libpq is optional: without it the gem builds, and postgres_url raises
# with the install hint (Spillway::Native::POSTGRES is false).
PQ_HINT = <<~MSG

  libpq was not found: Spillway is built without its PostgreSQL backend (postgres_url).
  For it, install libpq and its headers, then reinstall the gem:
    Debian/Ubuntu:  sudo apt-get install libpq-dev
    Fedora/RHEL:    sudo dnf install libpq-devel
    Alpine:         apk add libpq-dev
    macOS:          brew install libpq
  or point at your own build:  gem install spillway -- --with-pq-dir=/path/to/postgresql

MSG
_, pq_lib = dir_config("pq")
if pq_lib
  pq_lib.split(File::PATH_SEPARATOR).reverse_each { |dir| $DEFLIBPATH.unshift(dir) }
  pq_lib.split(File::PATH_SEPARATOR).each { |dir| $LDFLAGS << " -Wl,-rpath,#{dir}" }
end
if ENV["SPILLWAY_NO_LIBPQ"] == "1"
  message "SPILLWAY_NO_LIBPQ=1: building without the PostgreSQL backend\n"
else
  pkg_config("libpq")
  if have_library("pq", "PQconnectStartParams", ["libpq-fe.h"]) && have_header("libpq-fe.h")
    $defs << "-DSPILLWAY_HAVE_LIBPQ=1"
  else
    message PQ_HINT
  end
end

have_header("sys/epoll.h") || abort("sys/epoll.h is missing")
have_header("sys/eventfd.h") || abort("sys/eventfd.h is missing")
have_library("pthread")

$CFLAGS << " -std=gnu11 -Wall -Wextra -fvisibility=hidden -D_GNU_SOURCE"
$CFLAGS << " -Werror" if ENV["SPILLWAY_WERROR"] == "1"
if ENV["SPILLWAY_DEBUG"] == "1"
  $CFLAGS << " -O0 -g3 -DSPILLWAY_DEBUG=1"
end
if (san = ENV["SPILLWAY_SANITIZE"]) && !san.empty?
  $CFLAGS << " -fsanitize=#{san} -fno-omit-frame-pointer"
  $LDFLAGS << " -fsanitize=#{san}"
end

create_makefile("spillway/spillway_ext")
