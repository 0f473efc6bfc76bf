"""Auditing credit: estimators' advantages against the true ones, per segment and per turn."""
