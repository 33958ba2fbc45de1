"""Delivery-time estimate: tree-ensemble model, venue preparation times, training and evaluation."""
