# frozen_string_literal: true

class MessagesController < ApplicationController
  def index
    @messages = Message.order(:id).last(100)
  end

  def create
    Message.create!(body: params.require(:body))
    redirect_to root_path
  end
end
