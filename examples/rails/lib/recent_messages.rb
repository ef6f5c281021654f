# frozen_string_literal: true

# A small thread-safe list of the newest messages, ordered by Spillway id.
class RecentMessages
  def initialize(size)
    @size = size
    @lock = Mutex.new
    @items = []
  end

  def add(item)
    @lock.synchronize do
      @items << item
      @items.sort_by! { |m| self.class.id_key(m[:id]) }
      @items.shift while @items.size > @size
    end
    item
  end

  # Oldest first.
  def to_a
    @lock.synchronize { @items.dup }
  end

  # Ids are "<ms>-<seq>": compare as numbers.
  def self.id_key(id)
    id.to_s.split("-", 2).map(&:to_i)
  end
end
