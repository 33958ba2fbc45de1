"""Delivery order price calculator (DOPC): venue data, its cache, and the price rules."""
