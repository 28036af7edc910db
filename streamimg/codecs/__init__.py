# Message codecs: frame messages (frame.py) and pixel messages (pixel.py).
