"""Search a video collection with the cheap pipeline: a Qdrant index of student (and teacher) video
vectors and CLIP frame vectors (``store``), text and video queries (``query``), and the FastAPI
service with its web page (``app``, started by ``launch serve``)."""
