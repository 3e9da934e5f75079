"""Training engine shared by the classification pretrainer and the detection trainer."""
