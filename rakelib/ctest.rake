# frozen_string_literal: true

# The C core's own unit tests (spec/c/*.c), built and run outside Ruby.
#
#   rake ctest            the core's link graph (fails on objects that need
#                         each other in a circle), every test under ASan+UBSan
#                         (LeakSanitizer on), the queue and hub tests again
#                         under TSan, and the fuzz targets: the SSE encoder
#                         and the Redis links' reply handling (libFuzzer when
#                         clang can link it, the same property on seeded
#                         random input otherwise)
#   rake ctest:cycles     the link graph check alone
#   rake test:c           the same
#   rake ctest:valgrind   the tests built without sanitizers, under valgrind
#
# Knobs (environment): CTEST_CC (gcc), CTEST_CLANG (clang-14, then clang),
# CTEST_EXT (another copy of ext/spillway to test),
# CTEST_NO_FUZZER=1 (use the gcc fallback), FUZZ_RUNS (200000, fuzz_sse),
# FUZZ_REDIS_RUNS (2000, fuzz_redis: each run is a whole hub), CHECK_SEED,
# CHECK_SLOW (see spec/c/check.h). Test names given as CTEST_ONLY="a b" are
# passed to every binary as filters.
#
# Everything is built into spec/c/build/ (ignored by git), incrementally.

require "rbconfig"
require "shellwords"

module SpillwayCTest
  extend Rake::FileUtilsExt # sh

  ROOT = File.expand_path("..", __dir__)
  SPEC = File.join(ROOT, "spec", "c")
  # CTEST_EXT points the tests at another copy of the core (a patch under
  # review, an older commit); its objects go to a build directory of their own.
  EXT = File.expand_path(ENV.fetch("CTEST_EXT", File.join(ROOT, "ext", "spillway")))
  BUILD = if ENV["CTEST_EXT"]
            require "digest"
            File.join(SPEC, "build", "ext-#{Digest::SHA1.hexdigest(EXT)[0, 8]}")
          else
            File.join(SPEC, "build")
          end

  BASE_FLAGS = %w[-std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer].freeze
  VARIANTS = {
    asan: %w[-fsanitize=address,undefined -fno-sanitize-recover=all],
    tsan: %w[-fsanitize=thread],
    plain: []
  }.freeze

  # The whole C core, for the binaries that link the hub (hub.c calls into
  # the Redis link, which needs the rest): every .c that does not speak Ruby.
  # Found, not listed, so a file split or added in the core needs no change
  # here.
  HUB_CORE = Dir[File.join(EXT, "*.c")].sort.reject do |f|
    File.read(f).match?(%r{#include\s*[<"](ruby\.h|ruby/|binding\.h)})
  end.map { |f| File.basename(f, ".c") }.freeze

  # test binary => core files it links: only the modules it tests and what
  # they call (the link fails otherwise), so a test of the lower layers
  # cannot lean on the whole core.
  TESTS = {
    "test_sse" => %w[sse],
    "test_id" => %w[id],
    "test_idem" => %w[idem id],
    "test_queue" => %w[queue],
    "test_events" => %w[events id],
    "test_resp" => %w[resp],
    "test_tls" => %w[tls sconn resp resolve id],
    "test_targets" => %w[targets],
    "test_pg_sql" => %w[pg_sql],
    "test_channel" => %w[channel conn replay budget wheel streams polls frames log events id sse targets],
    "test_memory" => %w[memory channel conn replay budget wheel streams polls frames log events id sse targets],
    "test_hub" => HUB_CORE,
    "test_flush" => HUB_CORE,
    "test_log" => HUB_CORE,
    "test_redis" => HUB_CORE
  }.freeze
  TSAN_TESTS = %w[test_queue test_events test_hub test_flush test_log].freeze
  # fuzz target => core files it links
  FUZZ_TARGETS = {
    "fuzz_sse" => %w[sse],
    "fuzz_redis" => HUB_CORE
  }.freeze

  module_function

  def cc
    ENV.fetch("CTEST_CC", "gcc")
  end

  # hiredis and OpenSSL (tls.c): pkg-config's flags, or the plain names.
  def hiredis_flags
    @hiredis_flags ||= %w[hiredis openssl libpq].flat_map do |lib|
      out = `pkg-config --cflags --libs #{lib} 2>/dev/null`
      # libpq is optional, as in extconf.rb: with it the PostgreSQL backend
      # is built (and tested) too.
      next Shellwords.split(out) + (lib == "libpq" ? %w[-DSPILLWAY_HAVE_LIBPQ=1] : []) if $?.success?

      { "openssl" => %w[-lssl -lcrypto], "hiredis" => %w[-lhiredis], "libpq" => [] }.fetch(lib)
    end
  end

  def headers
    Dir[File.join(EXT, "*.h")] + Dir[File.join(SPEC, "*.h")]
  end

  def obj_dir(variant)
    File.join(BUILD, variant.to_s)
  end

  # Defines (once) the file task for one object of a variant; returns its path.
  def object(variant, src, extra = [])
    tag = extra.empty? ? "" : "-#{extra.join.gsub(/\W/, '')}"
    obj = File.join(obj_dir(variant), File.basename(src, ".c") + tag + ".o")
    unless Rake::Task.task_defined?(obj)
      Rake::FileTask.define_task(obj => [src, *headers]) do
        FileUtils.mkdir_p(File.dirname(obj))
        sh cc, *BASE_FLAGS, *VARIANTS.fetch(variant), *extra, "-I#{EXT}",
           *hiredis_flags.grep(/\A-[ID]/), "-c", src, "-o", obj, verbose: false
      end
    end
    obj
  end

  # Defines the file task for a test binary of a variant; returns its path.
  def binary(variant, name, core)
    suffix = variant == :asan ? "" : "_#{variant}"
    bin = File.join(BUILD, name + suffix)
    objs = [object(variant, File.join(SPEC, "#{name}.c"))] +
           core.map { |c| object(variant, File.join(EXT, "#{c}.c")) }
    unless Rake::Task.task_defined?(bin)
      Rake::FileTask.define_task(bin => objs) do
        sh cc, *VARIANTS.fetch(variant), *objs, *hiredis_flags, "-lpthread", "-o", bin, verbose: false
      end
    end
    bin
  end

  def fuzz_fallback_binary(variant, name)
    suffix = variant == :asan ? "" : "_#{variant}"
    bin = File.join(BUILD, "#{name}_rand" + suffix)
    objs = [object(variant, File.join(SPEC, "#{name}.c"), %w[-DFUZZ_STANDALONE])] +
           FUZZ_TARGETS.fetch(name).map { |c| object(variant, File.join(EXT, "#{c}.c")) }
    unless Rake::Task.task_defined?(bin)
      Rake::FileTask.define_task(bin => objs) do
        sh cc, *VARIANTS.fetch(variant), *objs, *hiredis_flags, "-lpthread", "-o", bin, verbose: false
      end
    end
    bin
  end

  # A clang that can link -fsanitize=fuzzer (Debian: clang-14 plus
  # libclang-rt-14-dev), or nil.
  def fuzz_clang
    return nil if ENV["CTEST_NO_FUZZER"] == "1"
    return @fuzz_clang if defined?(@fuzz_clang)

    @fuzz_clang = [ENV["CTEST_CLANG"], "clang-14", "clang"].compact.find do |clang|
      next false unless system(clang, "--version", out: File::NULL, err: File::NULL)

      FileUtils.mkdir_p(BUILD)
      probe = File.join(BUILD, "fuzz_probe.c")
      File.write(probe, "#include <stddef.h>\n#include <stdint.h>\n" \
                        "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
      system(clang, "-fsanitize=fuzzer,address,undefined", probe, "-o", File.join(BUILD, "fuzz_probe"),
             out: File::NULL, err: File::NULL)
    end
  end

  def fuzz_binary(clang, name)
    bin = File.join(BUILD, name)
    srcs = [File.join(SPEC, "#{name}.c")] + FUZZ_TARGETS.fetch(name).map { |c| File.join(EXT, "#{c}.c") }
    unless Rake::Task.task_defined?(bin)
      Rake::FileTask.define_task(bin => srcs + headers) do
        sh clang, *BASE_FLAGS, "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
           "-I#{EXT}", *hiredis_flags.grep(/\A-[ID]/), *srcs, *hiredis_flags.grep_v(/\A-[ID]/), "-lpthread",
           "-o", bin, verbose: false
      end
    end
    bin
  end

  # Runs of each fuzz target in `rake ctest`, and the seed corpus it starts
  # from (spec/c/corpus_<what>/, read only; what libFuzzer adds goes to
  # spec/c/build/).
  def fuzz_runs(name)
    name == "fuzz_sse" ? ENV.fetch("FUZZ_RUNS", "200000") : ENV.fetch("FUZZ_REDIS_RUNS", "2000")
  end

  def seed_corpus(name)
    dir = File.join(SPEC, "corpus_#{name.delete_prefix('fuzz_')}")
    Dir.exist?(dir) ? dir : nil
  end

  # libFuzzer's -dict option for spec/c/<name>.dict, when there is one.
  def fuzz_dict(name)
    dict = File.join(SPEC, "#{name}.dict")
    File.exist?(dict) ? ["-dict=#{dict}"] : []
  end

  # Runs one command, echoing its output; returns [ok, passed, failed] where
  # the counts come from the binary's closing "name: N passed, N failed"
  # line (a crash leaves none: then it counts as one failure).
  def run(label, cmd, env = {}, quiet: nil)
    $stdout.sync = true
    puts "== #{label}"
    passed = failed = nil
    IO.popen(env, cmd, err: %i[child out]) do |io|
      io.each_line do |line|
        print line unless quiet&.match?(line)
        if (m = line.match(/\A\S+: (\d+) passed, (\d+) failed\s*\z/))
          passed = m[1].to_i
          failed = m[2].to_i
        end
      end
    end
    ok = $?.success?
    puts "== #{label}: exited with #{$?.exitstatus || $?}" unless ok
    [ok, passed || 0, failed || (ok ? 0 : 1)]
  end

  def filters
    Shellwords.split(ENV.fetch("CTEST_ONLY", ""))
  end

  def report(results, started)
    passed = results.sum { |r| r[1] }
    failed = results.sum { |r| r[2] }
    bad = results.reject { |r| r[0] }
    puts format("ctest: %d binaries in %.1f s", results.size,
                Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
    puts "ctest: #{passed} passed, #{failed} failed"
    abort "ctest: failed: #{bad.map { |r| r[3] }.join(', ')}" unless bad.empty?
  end

  # The core's link graph: object => the objects whose symbols it needs
  # (nm's undefined symbols against every object's defined ones).
  def link_graph(objs)
    defined = {}
    needs = {}
    objs.each do |name, path|
      needs[name] = []
      IO.popen(["nm", path], &:read).each_line do |line|
        f = line.split
        if f.size == 3 && "TDBR".include?(f[1])
          defined[f[2]] = name
        elsif f.size == 2 && f[0] == "U"
          needs[name] << f[1]
        end
      end
    end
    needs.transform_values { |syms| syms.filter_map { |s| defined[s] }.uniq }
         .each_with_object({}) { |(n, deps), g| g[n] = deps - [n] }
  end

  # Groups of objects that need each other (strongly connected components
  # of more than one object; Tarjan's algorithm).
  def link_cycles(graph)
    index = {}
    low = {}
    stack = []
    on = {}
    groups = []
    counter = 0
    visit = lambda do |v|
      index[v] = low[v] = counter
      counter += 1
      stack.push(v)
      on[v] = true
      graph.fetch(v, []).each do |w|
        if !index.key?(w)
          visit.call(w)
          low[v] = [low[v], low[w]].min
        elsif on[w]
          low[v] = [low[v], index[w]].min
        end
      end
      next unless low[v] == index[v]

      group = []
      loop do
        w = stack.pop
        on[w] = false
        group << w
        break if w == v
      end
      groups << group.sort if group.size > 1
    end
    graph.each_key { |v| visit.call(v) unless index.key?(v) }
    groups
  end

  # Fails (returns false) when the core's compiled objects, bindings left
  # out, need each other in a circle: a lower module calls up only through
  # function pointers (backend.h, the link's hooks, a close callback).
  def check_link_graph(variant)
    objs = HUB_CORE.to_h { |c| [c, object(variant, File.join(EXT, "#{c}.c"))] }
    objs.each_value { |o| Rake::Task[o].invoke }
    groups = link_cycles(link_graph(objs))
    puts "== link graph of the core (#{objs.size} objects)"
    if groups.empty?
      puts "link graph: no cycles"
      return true
    end
    groups.each { |g| puts "link graph: these objects need each other: #{g.join(', ')}" }
    false
  end

  def sanitizer_env
    {
      "ASAN_OPTIONS" => "detect_leaks=1:check_initialization_order=1:strict_init_order=1",
      "UBSAN_OPTIONS" => "print_stacktrace=1",
      "TSAN_OPTIONS" => "halt_on_error=1:second_deadlock_stack=1"
    }
  end
end

# libFuzzer's progress lines and its dictionary advice: not worth a screen.
FUZZ_NOISE = /\A(#\d+\s+(NEW|REDUCE|pulse|INITED|RELOAD)\b|###### |"[^"]*" # Uses: |INFO: |\s*NEW_FUNC)/.freeze

desc "C core unit tests under ASan+UBSan, TSan for the queue and hub, and the fuzz targets (SSE, Redis replies)"
task :ctest do
  t = SpillwayCTest
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  runs = t::TESTS.map { |name, core| [name, t.binary(:asan, name, core)] }
  runs += t::TSAN_TESTS.map { |name| ["#{name} (tsan)", t.binary(:tsan, name, t::TESTS.fetch(name))] }
  clang = t.fuzz_clang
  fuzzers = t::FUZZ_TARGETS.keys.to_h do |name|
    [name, clang ? t.fuzz_binary(clang, name) : t.fuzz_fallback_binary(:asan, name)]
  end
  (runs.map(&:last) + fuzzers.values).each { |bin| Rake::Task[bin].invoke }

  graph_ok = t.check_link_graph(:asan)
  results = [[graph_ok, graph_ok ? 1 : 0, graph_ok ? 0 : 1, "link graph"]]
  results += runs.map do |label, bin|
    [*t.run(label, [bin, *t.filters], t.sanitizer_env), label]
  end
  fuzzers.each do |name, fuzz|
    fuzz_runs = t.fuzz_runs(name)
    seeds = t.seed_corpus(name)
    if clang
      # fuzz_sse's corpus kept its old name: the build directory may hold one.
      corpus = File.join(t::BUILD, name == "fuzz_sse" ? "fuzz_corpus" : "#{name}_corpus")
      FileUtils.mkdir_p(corpus)
      ok, = t.run("#{name} (libFuzzer, #{fuzz_runs} runs)",
                  [fuzz, "-runs=#{fuzz_runs}", "-seed=1", "-max_len=4096", "-print_final_stats=0", *t.fuzz_dict(name),
                   "-artifact_prefix=#{t::BUILD}/#{name}-", corpus, *seeds], t.sanitizer_env, quiet: FUZZ_NOISE)
      results << [ok, ok ? 1 : 0, ok ? 0 : 1, name]
    else
      puts "== #{name}: no clang with libFuzzer (apt-get install clang-14 libclang-rt-14-dev); " \
           "running the same property on seeded random input"
      env = t.sanitizer_env.merge("FUZZ_RUNS" => fuzz_runs)
      env["FUZZ_CORPUS"] = seeds if seeds
      results << [*t.run("#{name}_rand", [fuzz], env), "#{name}_rand"]
    end
  end
  t.report(results, started)
end

namespace :ctest do
  desc "Fails when the C core's compiled objects (bindings left out) need each other in a circle"
  task :cycles do
    abort "ctest:cycles: the core's link graph has a cycle" unless SpillwayCTest.check_link_graph(:plain)
  end

  desc "C core unit tests built without sanitizers, under valgrind"
  task :valgrind do
    t = SpillwayCTest
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    abort "ctest:valgrind: valgrind is not installed (apt-get install valgrind)" unless
      system("valgrind", "--version", out: File::NULL, err: File::NULL)

    runs = t::TESTS.map { |name, core| [name, t.binary(:plain, name, core)] }
    runs += t::FUZZ_TARGETS.keys.map { |name| ["#{name}_rand", t.fuzz_fallback_binary(:plain, name)] }
    runs.each { |_, bin| Rake::Task[bin].invoke }
    # Everything runs ~30x slower: deadlines stretch and loops shrink.
    env = { "CHECK_SLOW" => ENV.fetch("CHECK_SLOW", "10") }
    results = runs.map do |label, bin|
      args = label.start_with?("fuzz") ? [] : t.filters
      run_env = env.dup
      if label == "fuzz_sse_rand"
        run_env["FUZZ_RUNS"] = ENV.fetch("FUZZ_RUNS", "20000")
      elsif label.start_with?("fuzz")
        # A whole hub per run: the seeds and a few random programs.
        run_env["FUZZ_RUNS"] = ENV.fetch("FUZZ_REDIS_RUNS", "30")
        seeds = t.seed_corpus(label.delete_suffix("_rand"))
        run_env["FUZZ_CORPUS"] = seeds if seeds
      end
      [*t.run("#{label} (valgrind)",
              ["valgrind", "--error-exitcode=1", "--leak-check=full", "--quiet", bin, *args], run_env),
       label]
    end
    t.report(results, started)
  end
end

namespace :test do
  desc "Alias of ctest"
  task c: :ctest
end
