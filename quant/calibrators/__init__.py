"""quant.calibrators"""
