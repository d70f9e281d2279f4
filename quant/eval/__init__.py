"""quant.eval"""
