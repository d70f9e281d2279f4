"""quant.graph"""
