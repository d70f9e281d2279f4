"""quant.cli"""
