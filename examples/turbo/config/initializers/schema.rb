# frozen_string_literal: true

# The example's one table, created on first boot.
Rails.application.config.after_initialize do
  ActiveRecord::Base.connection_pool.with_connection do |c|
    next if c.table_exists?(:messages)

    c.create_table(:messages) do |t|
      t.string :body, null: false
      t.timestamps
    end
  end
end
