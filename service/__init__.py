"""A REST service that queues, trains, compares and serves Keras CNN experiments."""
