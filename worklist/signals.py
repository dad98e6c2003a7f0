"""Events about orders that other apps (the workflow engine) listen to.

Sent after the transaction that caused them has committed.
"""

from django.dispatch import Signal

# An order was cancelled or discontinued. kwargs: order
order_cancelled = Signal()

# An order's priority changed (e.g. routine to STAT). kwargs: order, old_priority
order_priority_changed = Signal()

# An arriving study was linked to an order. kwargs: order, study
order_linked = Signal()
