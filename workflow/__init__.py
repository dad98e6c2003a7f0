"""The cross-institution workflow engine.

Owns routing policies (versioned process definitions per institution),
radiologist pools and reading agreements, process instances and the
``ReadingTask`` state machine with SLA timers and escalation, the
radiologists' live worklists; and, in its ``referrals`` part, two-way
referrals with the sharing grants they imply (the ``Referral`` state
machine), second-opinion shares and image exchange.
"""
