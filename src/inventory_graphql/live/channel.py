"""The names PostgreSQL and this process share for availability notifications.

Migration 002 creates the trigger and notifies the channel; a unit test checks that the
migration spells them as they are here.
"""

CHANNEL = "inventory_availability"
TRIGGER = "product_notify_availability"  # on product, one pg_notify per statement
