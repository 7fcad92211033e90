"""Tools around the event system for people: the web dashboard and a private local Redis server for
development and tests.
"""
