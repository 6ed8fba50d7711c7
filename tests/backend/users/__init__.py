"""Recipes written as a researcher writes them, with their own data: the tests of any task."""
