# Sources: video files and image folders (video.py), Kafka frame batches (kafka.py).
