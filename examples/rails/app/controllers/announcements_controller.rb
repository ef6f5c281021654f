# frozen_string_literal: true

class AnnouncementsController < ApplicationController
  CHANNEL = "board"
  MAX_AUTHOR = 32
  MAX_TEXT = 280

  def index
    @announcements = recent.to_a.reverse
    # The page subscribes from the newest id it rendered: whatever is
    # published between this render and the stream's start is replayed.
    @cursor = @announcements.first&.dig(:id)
  end

  # POST /announcements (form or JSON) -> Spillway.publish
  def create
    author = params[:author].to_s.strip
    text = params[:text].to_s.strip
    error = validate(author, text)
    return invalid(error) if error

    announcement = { author: author, text: text, at: Time.now.utc.iso8601(3) }
    id = Spillway.publish(CHANNEL, announcement, event: "announcement")
    recent.add(announcement.merge(id: id))

    respond_to do |format|
      format.html { redirect_to root_path }
      format.json { render json: { id: id }, status: :created }
    end
  end

  private

  def recent
    Rails.configuration.x.announcements
  end

  def validate(author, text)
    return "author must be 1 to #{MAX_AUTHOR} characters" unless (1..MAX_AUTHOR).cover?(author.length)
    return "text must be 1 to #{MAX_TEXT} characters" unless (1..MAX_TEXT).cover?(text.length)
    return "no control characters, please" if "#{author}#{text}".match?(/[[:cntrl:]]/)

    nil
  end

  def invalid(error)
    respond_to do |format|
      format.html do
        @error = error
        @announcements = recent.to_a.reverse
        @cursor = @announcements.first&.dig(:id)
        render :index, status: :bad_request
      end
      format.json { render json: { error: error }, status: :bad_request }
    end
  end
end
