J7
unknown_frame&unknown control frame type `telemetry`