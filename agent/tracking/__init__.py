"""From detections to events (DESIGN.md section 5, Events): filters before tracking
(``filters``), the tracker and its object life cycle (``tracker``), zones (``zones``), the event
builder (``events``) and the events kept on disk (``store``)."""
