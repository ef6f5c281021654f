# frozen_string_literal: true

module Spillway
  # Who a message is for, and who a stream is: lists of user, group and
  # client ids in the text form the native hub matches (targets.h):
  # "u=7,8;g=admins;c=9f2c". A targeted message reaches a stream when (it
  # names no users and no groups, or the stream's user is one of its users,
  # or one of the stream's groups one of its groups) and (it names no
  # clients, or the stream's client is one of them) — message_bus's rule —
  # live, in a resume and in a gap repair alike. A stream without an
  # identity gets only messages without targets.
  module Targets
    ID = %r{\A[A-Za-z0-9_.@:+/-]{1,128}\z}.freeze
    MAX_IDS = 1024

    module_function

    # The targets text of a publish, or nil (everyone). ArgumentError for a
    # list that is not an Array of Strings, Symbols or Integers, an empty
    # list, an id outside ID, or more than MAX_IDS ids in all.
    def spec(user_ids: nil, group_ids: nil, client_ids: nil)
      parts = { "u" => [:user_ids, user_ids], "g" => [:group_ids, group_ids], "c" => [:client_ids, client_ids] }
      total = 0
      text = parts.filter_map do |kind, (name, list)|
        next if list.nil?

        ids = ids!(name, list)
        raise ArgumentError, "#{name} is empty (leave it out, or nil, to reach everyone)" if ids.empty?

        total += ids.size
        "#{kind}=#{ids.join(',')}"
      end.join(";")
      raise ArgumentError, "more than #{MAX_IDS} user, group and client ids in all (#{total})" if total > MAX_IDS

      text.empty? ? nil : text
    end

    # A stream's identity from identify's Hash ({ user_id:, group_ids:,
    # client_id: }, any of them nil) and the client_id the browser sent;
    # nil when there is none.
    def identity(who, client_id = nil)
      who ||= {}
      raise ArgumentError, "identify must return a Hash or nil, got #{who.class}" unless who.is_a?(Hash)

      user = who[:user_id]
      groups = who[:group_ids]
      client = who.key?(:client_id) ? who[:client_id] : client_id
      parts = []
      parts << "u=#{one!(:user_id, user)}" unless user.nil?
      gids = groups.nil? ? [] : ids!(:group_ids, groups)
      raise ArgumentError, "more than #{MAX_IDS} group ids" if gids.size > MAX_IDS

      parts << "g=#{gids.join(',')}" unless gids.empty?
      parts << "c=#{one!(:client_id, client)}" unless client.nil? || client == ""
      parts.empty? ? nil : parts.join(";")
    end

    def ids!(name, list)
      raise ArgumentError, "#{name} must be an Array, got #{list.class}" unless list.is_a?(Array)

      list.map { |id| one!(name, id) }.uniq
    end

    def one!(name, id)
      unless id.is_a?(String) || id.is_a?(Symbol) || id.is_a?(Integer)
        raise ArgumentError, "#{name}: #{id.inspect} is not a String, Symbol or Integer"
      end

      s = id.to_s
      raise ArgumentError, "#{name}: #{s[0, 40].inspect} is not 1 to 128 characters of A-Z a-z 0-9 _ . @ : + / -" unless s.match?(ID)

      s
    end
  end
end
