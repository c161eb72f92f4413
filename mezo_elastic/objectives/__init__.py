"""Objectives: what a MeZO step measures at theta + eps z and theta - eps z (scoring and rewards)."""
