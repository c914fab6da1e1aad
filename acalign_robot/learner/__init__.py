"""The learner process: ACA phase 3 on transitions streamed by controllers (see `process`)."""
