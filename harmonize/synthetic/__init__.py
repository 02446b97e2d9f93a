"""Seeded synthetic sources that mirror the real layouts, quirks included (no real patient data).

Used by `covid-cxr demo` and by the tests.
"""
