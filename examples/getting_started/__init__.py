"""Getting started: the yin-yang workflow of the README: a step, a callback, a timeout."""
