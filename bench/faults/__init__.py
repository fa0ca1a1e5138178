"""The fault suite (issue 11): kill -9 each part of a running stack under load and count
what was acked, stored and delivered. ``make faults`` runs it; see docs/reliability.md."""
