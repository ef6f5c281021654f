# frozen_string_literal: true

# Part of bench/run.rb: the Profile section of RESULTS.md, from the profile
# workload (profile.rb), followed by the dated hand-written notes in
# bench/PROFILE-NOTES.md when that file exists.

PROFILE_NOTES = File.join(BENCH, "PROFILE-NOTES.md")

def profile_table(p)
  out = +""
  out << "| where (share of the server process's samples) | % | µs per delivery |\n|---|---:|---:|\n"
  p[:dsos].each { |d| out << "| #{d[:dso]} (self) | #{format('%.1f', d[:pct])} | #{fmt(d[:us_per_delivery], 3)} |\n" }
  p[:paths].each do |x|
    out << "| #{x[:entry]} and below: #{x[:what]} | #{format('%.1f', x[:pct])} | #{fmt(x[:us_per_delivery], 3)} |\n"
  end
  out
end

def profile_section(results)
  profiled = results.select { |r| r[:profile].is_a?(Hash) && !r[:profile][:error] }
  failed = results.select { |r| r[:profile].is_a?(Hash) && r[:profile][:error] }
  return nil if profiled.empty? && failed.empty?

  out = +"## Profile\n\n"
  failed.each { |r| out << "- #{r[:name]}: not profiled (#{r[:profile][:error]})\n" }
  profiled.each do |r|
    p = r[:profile]
    out << "### #{r[:name]}\n\n"
    out << "- date: #{p[:date]}; command: #{p[:command]}\n"
    out << "- #{fmt(p[:deliveries])} deliveries at #{fmt(p[:deliveries_per_s])}/s (under perf); server CPU " \
           "#{p[:server_cpu_s]} s = **#{p[:us_per_delivery]} µs per delivery**; #{fmt(p[:samples])} samples " \
           "(#{p[:sampled_cpu_s]} CPU s)\n"
    out << "- threads: #{p[:threads].map { |t| "#{t[:thread]} #{format('%.1f', t[:pct])}%" }.join(', ')}\n\n"
    out << profile_table(p)
    out << "\nTop symbols (self):\n\n| symbol | % | µs per delivery |\n|---|---:|---:|\n"
    p[:top_symbols].first(12).each do |s|
      out << "| `#{s[:symbol]}` | #{format('%.2f', s[:pct])} | #{fmt(s[:us_per_delivery], 3)} |\n"
    end
    unless p[:own_symbols].empty?
      out << "\nInside spillway_ext.so (self, µs per delivery): " \
             "#{p[:own_symbols].first(8).map { |s| "`#{s[:symbol]}` #{fmt(s[:us_per_delivery], 3)}" }.join(', ')}\n"
    end
    out << "\n"
  end
  if File.exist?(PROFILE_NOTES)
    out << "### Notes (hand-written, from bench/PROFILE-NOTES.md)\n\n#{File.read(PROFILE_NOTES).sub(/\A#[^\n]*\n+/, '')}"
  end
  out
end
