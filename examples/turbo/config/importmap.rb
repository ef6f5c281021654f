# frozen_string_literal: true

# Pin Turbo to the copy this app serves from the turbo-rails gem (config/routes.rb:
# GET /turbo.js); no asset pipeline needed.
pin "@hotwired/turbo-rails", to: "/turbo.js", preload: true
