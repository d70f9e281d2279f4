"""quant.report"""
