# frozen_string_literal: true

Rails.application.routes.draw do
  root "announcements#index"
  resources :announcements, only: %i[index create]
end
